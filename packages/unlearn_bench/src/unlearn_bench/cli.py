"""The ``unlearn-bench`` console script: generate, finetune, retrain, unlearn, evaluate,
predict, benchmark.

A table of commands on :class:`medcommon.cli.App`; each ``cmd_*`` makes one call into
the library. The run commands (``finetune``, ``retrain``, ``unlearn``) pass one
:class:`medcommon.run.RunSpec` (``app.spec(args)``) to :mod:`unlearn_bench.train`.
``unlearn --method`` and ``benchmark --methods`` are validated against, and documented
from, :data:`unlearn_bench.methods.METHODS`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medcommon.cli import (
    App,
    add_benchmark_args,
    add_config_args,
    add_evaluate_args,
    add_methods_arg,
    add_preset_arg,
    add_run_args,
    add_synth_args,
)
from unlearn_bench import __version__
from unlearn_bench.methods import METHODS

app = App(
    "unlearn-bench",
    "Unlearning benchmark for biomedical multimodal LLMs (MLLMU-Med style).",
    __version__,
)

MODEL_HELP = "the vanilla model: RUN or RUN/model of finetune, or any Llava folder"
BASE_HELP = "a Hugging Face Llava folder to start from (default: a fresh tiny Llava)"
DATA_HELP = "dataset folder written by generate, or an MLLMU-Bench folder (or its forget_N)"


def _generate_args(p: argparse.ArgumentParser) -> None:
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


def _preset_arg(p: argparse.ArgumentParser, real: str) -> None:
    """``--preset`` without a fixed default: :func:`unlearn_bench.config.choose_preset` picks it."""
    add_preset_arg(p, None)
    _preset_help(p, real)


def _preset_help(p: argparse.ArgumentParser, real: str) -> None:
    action = next(a for a in p._actions if a.dest == "preset")
    action.help = (
        f"a preset: tiny, demo, small, knowledge or full (default: full {real}, else tiny)"
    )


# The precision, LoRA and memory flags: shorthands for --set of the scale group's fields.
SCALE_FLAGS = {
    "dtype": "scale.dtype",
    "lora": "scale.lora",
    "adapter_only": "scale.save_adapter_only",
    "grad_accum": "scale.grad_accum_steps",
    "grad_checkpointing": "scale.gradient_checkpointing",
}


def _scale_args(p: argparse.ArgumentParser) -> None:
    """The flags of :data:`SCALE_FLAGS` (a later ``--set`` of the same field wins)."""
    g = p.add_argument_group("precision and memory (real checkpoints)")
    g.add_argument(
        "--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
        help="compute dtype; trainable weights stay float32 (default auto: bfloat16 on a GPU "
        "that has it, else float32)",
    )  # fmt: skip
    g.add_argument(
        "--lora", action="store_true", help="LoRA r=16 a=16 on the language model (needs peft)"
    )
    g.add_argument(
        "--adapter-only", action="store_true", help="with --lora: save the adapter, not merged"
    )
    g.add_argument("--grad-accum", type=int, default=None, metavar="N", help="micro-batches/step")
    g.add_argument(
        "--grad-checkpointing", action="store_true", help="recompute activations in backward"
    )


def _run_args(p: argparse.ArgumentParser, model_help: str, model_required: bool) -> None:
    """``--data --out --model [--method] --preset --config --set --seed --device --quiet --resume``
    and the scale flags; ``--method``/``--seed``/``--preset`` default to the run's own on ``--resume``."""
    p.add_argument("--data", type=Path, required=True, help=DATA_HELP)
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--model", type=Path, required=model_required, default=None, help=model_help)
    methods = METHODS if model_required else None  # unlearn: --method (default npo)
    add_run_args(p, methods, "npo" if methods else None, None)
    _preset_help(p, "with --model" if not model_required else "for a real checkpoint")
    _scale_args(p)


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    # UES needs all four subsets, so the default split is "all".
    add_evaluate_args(p, "all", "all (default) or one of forget, retain, test, general")
    p.add_argument(
        "--vanilla",
        type=Path,
        default=None,
        help="vanilla run for UES (default: from the run's config)",
    )
    p.add_argument("--reference", type=Path, default=None, help="retrained (gold) run for PrivLeak")
    p.add_argument(
        "--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
        help="the model's dtype while evaluating (--set dtype; default auto: bfloat16 on a GPU "
        "that has it, else float32)",
    )  # fmt: skip
    p.add_argument(
        "--mcq-prompt", default=None, choices=["zero_shot", "mllmu_few_shot"],
        help="multiple choice asked zero-shot (default) or few-shot as MLLMU-Bench's eval.py "
        "(--set mcq_prompt)",
    )  # fmt: skip
    _preset_arg(p, "for a model descended from a real checkpoint")
    add_config_args(p)


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", "--run", dest="model", type=Path, required=True,
        help="RUN or RUN/model of finetune / retrain / unlearn, or any Llava folder",
    )  # fmt: skip
    p.add_argument("questions", nargs="*", metavar="QUESTION", help="questions to answer")
    p.add_argument("--image", type=Path, default=None, help="PNG to ask every QUESTION about")
    p.add_argument(
        "--questions", dest="questions_file", type=Path, default=None, metavar="FILE.jsonl",
        help='JSON Lines of {"question": ..., "image": path?} (paths relative to the file)',
    )  # fmt: skip
    p.add_argument(
        "--max-new-tokens", type=int, default=50, help="answer length limit (default 50)"
    )
    p.add_argument("--out", type=Path, default=None, help="write JSON Lines here (default: stdout)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.epilog = "Without --out: one answer per line, in the order of the questions."


def _benchmark_args(p: argparse.ArgumentParser) -> None:
    add_benchmark_args(p)
    p.add_argument(
        "--scenarios",
        nargs="+",
        default=None,
        help="scenarios to run (default: both; the demo preset: privacy)",
    )
    p.add_argument("--forget-ratio", type=float, default=0.10, help="forget ratio (default 0.10)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="(scenario, seed) pieces run at once, one process each, every one pinned to "
        "--threads (default: the CPU cores at --threads each); the numbers do not depend on it",
    )
    add_methods_arg(p, METHODS)


@app.command(
    "generate", "write a synthetic dataset (privacy or incorrectness)", args=_generate_args
)
def cmd_generate(args) -> int:
    from unlearn_bench.config import resolve_synth
    from unlearn_bench.synth import generate

    cfg = resolve_synth(args.preset, args.forget_ratio, args.config, args.overrides)
    meta = generate(args.out, args.scenario, cfg, seed=args.seed, images=args.images)
    if not args.quiet:
        print(f"wrote {args.out}: {meta['counts']}")
    return 0


def _done(args, m: dict) -> int:
    """Print what a run command did (unless ``--quiet``)."""
    if not args.quiet:
        if m["command"] == "unlearn":
            what, seconds = f"unlearn {m['method']}", f"{m['train_seconds']:.2f}"
        else:
            what, seconds = m["command"], f"{m['train_seconds']:.1f}"
        print(f"{what}: {m['steps']} steps in {seconds}s -> {args.out / 'model'}")
    return 0


@app.command(
    "finetune",
    "train the vanilla model on forget + retain",
    args=lambda p: _run_args(p, BASE_HELP, False),
)
def cmd_finetune(args) -> int:
    from unlearn_bench.train import finetune

    return _done(args, finetune(app.spec(args, shorthands=SCALE_FLAGS)))


@app.command(
    "retrain",
    "train on retain only from the same initialisation (gold standard)",
    args=lambda p: _run_args(p, BASE_HELP, False),
)
def cmd_retrain(args) -> int:
    from unlearn_bench.train import finetune

    return _done(args, finetune(app.spec(args, shorthands=SCALE_FLAGS)))


@app.command(
    "unlearn",
    "apply an unlearning method to a vanilla model",
    args=lambda p: _run_args(p, MODEL_HELP, True),
)
def cmd_unlearn(args) -> int:
    from unlearn_bench.train import unlearn

    return _done(args, unlearn(app.spec(args, shorthands=SCALE_FLAGS)))


@app.command("evaluate", "per-subset metrics, MIA, PrivLeak and UES of a run", args=_evaluate_args)
def cmd_evaluate(args) -> int:
    from unlearn_bench.config import choose_preset, resolve_eval
    from unlearn_bench.evaluate import evaluate_run, summary_lines
    from unlearn_bench.mllmu import dataset_folder
    from unlearn_bench.train import is_tiny_lineage

    preset = choose_preset(args.preset, real_model=not is_tiny_lineage(args.run))
    # the flags first, so a --set given too wins
    flags = [f"{k}={v}" for k, v in (("dtype", args.dtype), ("mcq_prompt", args.mcq_prompt)) if v]
    cfg = resolve_eval(preset, args.config, [*flags, *args.overrides])
    res = evaluate_run(
        args.run, dataset_folder(args.data), cfg, split=args.split, vanilla=args.vanilla, reference=args.reference,
        device=args.device, quiet=args.quiet,
    )  # fmt: skip
    if not args.quiet:
        print("\n".join(summary_lines(res)))
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="dataset folder written by generate")
    p.add_argument("--out", type=Path, required=True, help="MLLMU-Bench folder to write")
    p.add_argument("--quiet", action="store_true", help="print nothing")


@app.command(
    "export-mllmu", "write a dataset folder in MLLMU-Bench's parquet format", args=_export_args
)
def cmd_export_mllmu(args) -> int:
    from unlearn_bench.mllmu import load_folder, write_mllmu

    out = write_mllmu(load_folder(args.data), args.out)
    if not args.quiet:
        print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0


@app.command(
    "predict", "greedy answers of a model to new questions (optionally about an image)",
    args=_predict_args,
)  # fmt: skip
def cmd_predict(args) -> int:
    from unlearn_bench.predict import run_predict

    _, answers = run_predict(
        args.model, args.questions, image=args.image, questions_file=args.questions_file,
        out=args.out, max_new_tokens=args.max_new_tokens, device=args.device, quiet=args.quiet,
    )  # fmt: skip
    if args.out is not None:
        if not args.quiet:
            print(f"wrote {args.out} ({len(answers)} answers)")
    else:
        for answer in answers:
            print(" ".join(answer.split()))  # one line per answer, whatever it holds
    return 0


@app.command(
    "benchmark",
    "vanilla, every method and retrain on both scenarios (demo: NPO and GA on privacy)",
    args=_benchmark_args,
)
def cmd_benchmark(args) -> int:
    from unlearn_bench.benchmark import run_benchmark

    run_benchmark(
        args.out, preset=args.preset, seeds=args.seeds, scenarios=args.scenarios,
        forget_ratio=args.forget_ratio, methods=args.methods, data=args.data,
        device=args.device, quiet=args.quiet, workers=args.workers, threads=args.threads,
    )  # fmt: skip
    return 0


def _matched_args(p: argparse.ArgumentParser) -> None:
    from medcommon.cli.args import BENCHMARK_THREADS, add_preset_arg
    from unlearn_bench.matched import METHODS_RUN, PRESET

    p.add_argument(
        "--out", type=Path, required=True, help="folder for results.json, report.md, tradeoff.png"
    )
    add_preset_arg(p, PRESET)
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None,
        help="seeds (default: the preset's reported seeds: knowledge 0-2, knowledge-w4 0-3, "
        "knowledge-w4-f8 0-11)",
    )  # fmt: skip
    p.add_argument(
        "--methods", nargs="*", default=None,
        help=f"methods on the dose grid; none named: vanilla and retrain only (default: the "
        f"preset's matched.methods, else {' '.join(METHODS_RUN)})",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="seeds run at once (default 1)")
    p.add_argument(
        "--threads", type=int, default=BENCHMARK_THREADS,
        help=f"CPU threads per process, pinned (default {BENCHMARK_THREADS}; recorded)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


@app.command(
    "matched",
    "unlearning at matched forgetting: each method's dose grid, the dose chosen on validation "
    "probes, full evaluation and relearning there (issue #23's protocol)",
    args=_matched_args,
)
def cmd_matched(args) -> int:
    from unlearn_bench.config import matched_preset
    from unlearn_bench.matched import METHODS_RUN, run_matched

    # the preset's matched section fixes a later setting's seeds and methods (config.py)
    cfg = matched_preset(args.preset)
    seeds = args.seeds if args.seeds is not None else cfg.seeds
    methods = args.methods if args.methods is not None else cfg.methods
    run_matched(
        args.out, preset=args.preset, seeds=seeds,
        methods=methods if methods is not None else METHODS_RUN,
        device=args.device, quiet=args.quiet, workers=args.workers, threads=args.threads,
    )  # fmt: skip
    return 0


main, entry, build_parser = app.main, app.entry, app.build_parser

if __name__ == "__main__":  # `python -m unlearn_bench.cli` (e.g. under `accelerate launch`)
    entry()
