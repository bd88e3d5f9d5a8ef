"""``unlearn-bench``: generate / finetune / unlearn / retrain / evaluate / benchmark."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from medcommon.cli import (
    add_benchmark_args,
    add_common_args,
    add_config_args,
    add_evaluate_args,
    add_synth_args,
    make_parser,
    run_main,
    subparsers,
)
from medcommon.config import resolve_config
from unlearn_bench import __version__
from unlearn_bench.config import (
    EvalConfig,
    FinetuneConfig,
    SynthConfig,
    check_preset,
    eval_preset,
    finetune_preset,
    synth_preset,
)


def _run_args(p: argparse.ArgumentParser, model_help: str, model_required: bool = False) -> None:
    p.add_argument("--data", type=Path, required=True, help="dataset folder written by generate")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--model", type=Path, required=model_required, default=None, help=model_help)
    p.add_argument("--preset", default="tiny", help="tiny, small or full (default tiny)")
    add_config_args(p)
    add_common_args(p)
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "unlearn-bench",
        "Unlearning benchmark for biomedical multimodal LLMs (MLLMU-Med style).",
        __version__,
    )
    sub = subparsers(parser)
    p = sub.add_parser("generate", help="write a synthetic dataset (privacy or incorrectness)")
    add_synth_args(p)
    p.add_argument(
        "--scenario", default="privacy", help="privacy or incorrectness (default privacy)"
    )
    p.add_argument(
        "--forget-ratio",
        type=float,
        default=None,
        help="fraction of entities to forget (default 0.10)",
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="use the images of this folder instead of synthetic ones",
    )
    add_config_args(p)

    base_help = "a Hugging Face Llava folder to start from (default: a fresh tiny Llava)"
    p = sub.add_parser("finetune", help="train the vanilla model on forget + retain")
    _run_args(p, base_help)
    p = sub.add_parser(
        "retrain", help="train on retain only from the same initialisation (gold standard)"
    )
    _run_args(p, base_help)
    p = sub.add_parser("unlearn", help="apply an unlearning method to a vanilla model")
    _run_args(p, "the vanilla model: RUN or RUN/model of finetune, or any Llava folder", True)
    p.add_argument("--method", default="npo", help="ga, grad_diff, kl_min, npo, idk, simnpo or rmu")

    p = sub.add_parser("evaluate", help="per-subset metrics, MIA, PrivLeak and UES of a run")
    # UES needs all four subsets, so the default split is "all".
    add_evaluate_args(p, "all", "all (default) or one of forget, retain, test, general")
    p.add_argument(
        "--vanilla",
        type=Path,
        default=None,
        help="vanilla run for UES (default: from the run's config)",
    )
    p.add_argument("--reference", type=Path, default=None, help="retrained (gold) run for PrivLeak")
    p.add_argument("--preset", default="tiny", help="tiny, small or full (evaluation settings)")
    add_config_args(p)

    p = sub.add_parser("benchmark", help="vanilla, every method and retrain on both scenarios")
    add_benchmark_args(p)
    p.add_argument(
        "--scenarios", nargs="+", default=["privacy", "incorrectness"], help="scenarios to run"
    )
    p.add_argument("--forget-ratio", type=float, default=0.10, help="forget ratio (default 0.10)")
    p.add_argument("--methods", nargs="+", default=None, help="subset of methods (default: all)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_preset(args.preset)
    if args.command == "generate":
        from unlearn_bench.synth import generate

        base = synth_preset(args.preset)
        if args.forget_ratio is not None:
            base = dataclasses.replace(base, forget_ratio=args.forget_ratio)
        cfg = resolve_config(SynthConfig, base=base, file=args.config, overrides=args.overrides)
        meta = generate(args.out, args.scenario, cfg, seed=args.seed, images=args.images)
        if not args.quiet:
            print(f"wrote {args.out}: {meta['counts']}")
        return 0
    if args.command in ("finetune", "retrain"):
        from unlearn_bench.train import finetune

        cfg = resolve_config(
            FinetuneConfig,
            base=finetune_preset(args.preset),
            file=args.config,
            overrides=args.overrides,
        )
        m = finetune(
            args.data,
            args.out,
            cfg,
            seed=args.seed,
            model_path=args.model,
            retain_only=args.command == "retrain",
            device=args.device,
            quiet=args.quiet,
            resume=args.resume,
        )
        if not args.quiet:
            print(
                f"{args.command}: {m['steps']} steps in {m['train_seconds']:.1f}s -> {args.out / 'model'}"
            )
        return 0
    if args.command == "unlearn":
        from unlearn_bench.methods import METHODS
        from unlearn_bench.train import unlearn

        cls = METHODS.get(args.method)
        cfg = resolve_config(
            cls.config_class,
            base=cls.preset_config(args.preset),
            file=args.config,
            overrides=args.overrides,
        )
        m = unlearn(
            args.model,
            args.data,
            args.out,
            args.method,
            cfg,
            seed=args.seed,
            device=args.device,
            quiet=args.quiet,
            resume=args.resume,
        )
        if not args.quiet:
            print(
                f"unlearn {args.method}: {m['steps']} steps in {m['train_seconds']:.2f}s -> {args.out / 'model'}"
            )
        return 0
    if args.command == "evaluate":
        from unlearn_bench.evaluate import evaluate_run, flatten

        cfg = resolve_config(
            EvalConfig, base=eval_preset(args.preset), file=args.config, overrides=args.overrides
        )
        res = evaluate_run(
            args.run,
            args.data,
            cfg,
            split=args.split,
            vanilla=args.vanilla,
            reference=args.reference,
            device=args.device,
            quiet=args.quiet,
        )
        if not args.quiet:
            for k, v in flatten(res).items():
                if not k.endswith(("_image_text", "_text_only")):
                    print(f"{k:28s} {v:.4f}")
        return 0
    from unlearn_bench.benchmark import run_benchmark

    run_benchmark(
        args.out,
        preset=args.preset,
        seeds=args.seeds,
        scenarios=args.scenarios,
        forget_ratio=args.forget_ratio,
        methods=args.methods,
        data=args.data,
        device=args.device,
        quiet=args.quiet,
    )
    return 0


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(run_main(main))


if __name__ == "__main__":  # `python -m unlearn_bench.cli` (e.g. under `accelerate launch`)
    entry()
