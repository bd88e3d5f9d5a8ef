"""The ``pbbl-cxr`` console script: synth, build-splits, train, evaluate, benchmark.

Every input is checked (manifests parsed, images decoded) before anything is written
under ``--out``, so bad input exits with code 2, one ``error:`` line and no run folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from medcommon.cli import (
    add_benchmark_args,
    add_config_args,
    add_evaluate_args,
    add_synth_args,
    add_train_args,
    make_parser,
    require_fresh_out,
    run_main,
    subparsers,
)
from medcommon.config import config_to_dict, resolve_config
from medcommon.errors import InputError
from medcommon.fs import write_json_atomic, write_text_atomic
from medcommon.models import save_pretrained
from medcommon.train.accelerator import resolve_device
from pbbl_cxr import __version__
from pbbl_cxr.config import RunConfig, SynthConfig, run_preset, synth_preset

METHOD_NAMES = ["erm", "gce", "lff", "groupdro", "bbs-oracle", "pbbl"]


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-column", default=None, help="label column (default: detected)")
    p.add_argument("--bias-column", default=None, help="bias column (default: detected)")
    p.add_argument(
        "--image-root", type=Path, default=None, help="folder image paths resolve against"
    )
    p.add_argument(
        "--path-map",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="rewrite an image-path prefix (repeatable), e.g. the published absolute paths",
    )


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.5 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0.5, 1), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "pbbl-cxr",
        "Pseudo bias-balanced learning for debiased chest X-ray classification.",
        __version__,
    )
    sub = subparsers(parser)

    p = sub.add_parser("synth", help="write a synthetic GbP/SbP-style dataset")
    add_synth_args(p)
    p.add_argument("--kind", choices=["gbp", "sbp"], default="gbp", help="layout (default gbp)")
    p.add_argument(
        "--bias-ratio", type=_ratio, default=0.95, help="share of bias-aligned train samples"
    )
    add_config_args(p)

    p = sub.add_parser(
        "build-splits", help="biased, patient-disjoint splits from NIH/MIMIC metadata"
    )
    p.add_argument("--nih-csv", type=Path, required=True, help="NIH Data_Entry_2017.csv")
    p.add_argument("--out", type=Path, required=True, help="folder for the split manifests")
    p.add_argument("--kind", choices=["gbp", "sbp"], default="gbp")
    p.add_argument("--bias-ratio", type=_ratio, default=0.9)
    p.add_argument(
        "--finding", default=None, help="label finding (default Pneumothorax / Pneumonia)"
    )
    p.add_argument("--bias-value", default="M", help="gbp: Patient Gender coded as bias 1")
    p.add_argument(
        "--mimic-chexpert", type=Path, default=None, help="sbp: mimic-cxr-2.0.0-chexpert.csv"
    )
    p.add_argument(
        "--mimic-metadata", type=Path, default=None, help="sbp: mimic-cxr-2.0.0-metadata.csv"
    )
    p.add_argument("--nih-prefix", default="images/", help="prefix of NIH image paths")
    p.add_argument("--mimic-prefix", default="MIMIC/", help="prefix of MIMIC image paths")
    p.add_argument("--n-train", type=int, default=1800)
    p.add_argument("--n-valid", type=int, default=600)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train one method on a dataset folder")
    add_train_args(p, METHOD_NAMES, "pbbl")
    _add_data_args(p)

    p = sub.add_parser(
        "evaluate", help="score a run's model on a split (writes RUN/eval-SPLIT.json)"
    )
    add_evaluate_args(p)
    _add_data_args(p)

    p = sub.add_parser("benchmark", help="all methods x GbP/SbP x bias ratios x seeds")
    add_benchmark_args(p)
    p.add_argument(
        "--methods", nargs="+", default=None, help=f"subset of: {' '.join(METHOD_NAMES)}"
    )
    p.add_argument("--kinds", nargs="+", choices=["gbp", "sbp"], default=["gbp", "sbp"])
    p.add_argument("--ratios", nargs="+", type=_ratio, default=[0.9, 0.95, 0.99])
    add_config_args(p)
    _add_data_args(p)
    return parser


def _data_options(args: argparse.Namespace, cfg: RunConfig):
    from pbbl_cxr.data import DataOptions, parse_path_map

    if args.image_root is not None and not args.image_root.is_dir():
        raise InputError(args.image_root, "--image-root folder not found")
    return DataOptions(
        label_column=args.label_column,
        bias_column=args.bias_column,
        image_root=args.image_root,
        path_map=parse_path_map(args.path_map),
        image_size=cfg.model.image_size,
        num_classes=cfg.model.num_classes,
    )


def _resolve_run_config(args: argparse.Namespace) -> RunConfig:
    cfg = resolve_config(
        RunConfig, base=run_preset(args.preset), file=args.config, overrides=args.overrides
    )
    if getattr(args, "checkpoint_every", None) is not None:
        from dataclasses import replace

        cfg = replace(cfg, checkpoint_every=args.checkpoint_every)
    return cfg.check()


def cmd_synth(args: argparse.Namespace) -> int:
    from pbbl_cxr.synth import generate

    base = synth_preset(args.preset, kind=args.kind, bias_ratio=args.bias_ratio)
    cfg = resolve_config(SynthConfig, base=base, file=args.config, overrides=args.overrides)
    generate(args.out, cfg, seed=args.seed, quiet=args.quiet)
    print(f"wrote {cfg.kind} dataset ({cfg.n_train}/{cfg.n_valid}/{cfg.n_test}) to {args.out}")
    return 0


def cmd_build_splits(args: argparse.Namespace) -> int:
    from pbbl_cxr.splits import mimic_candidates, nih_candidates, sample_biased_splits, write_splits

    for flag in ("n_train", "n_valid", "n_test"):
        if getattr(args, flag) < 4:
            raise InputError(f"--{flag.replace('_', '-')}", "must be at least 4")
    if args.kind == "gbp":
        finding = args.finding or "Pneumothorax"
        cands = nih_candidates(args.nih_csv, finding, "gender", args.bias_value, args.nih_prefix)
    else:
        if args.mimic_chexpert is None or args.mimic_metadata is None:
            raise InputError("--mimic-chexpert", "sbp needs --mimic-chexpert and --mimic-metadata")
        finding = args.finding or "Pneumonia"
        cands = nih_candidates(args.nih_csv, finding, "source", prefix=args.nih_prefix)
        cands += mimic_candidates(
            args.mimic_chexpert, args.mimic_metadata, finding, args.mimic_prefix
        )
    splits = sample_biased_splits(
        cands, (args.n_train, args.n_valid, args.n_test), args.bias_ratio, args.seed
    )
    for path in write_splits(args.out, splits, args.kind):
        print(f"wrote {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pbbl_cxr.data import load_split
    from pbbl_cxr.methods import METHODS, RunContext, run_method
    from pbbl_cxr.models import saved_config

    cfg = _resolve_run_config(args)
    METHODS.get(args.method)
    device = resolve_device(args.device)
    opts = _data_options(args, cfg)
    out: Path = args.out
    if not args.resume:
        require_fresh_out(out)
    if cfg.model.backbone_weights and not Path(cfg.model.backbone_weights).is_file():
        raise InputError(cfg.model.backbone_weights, "backbone weights file not found")
    train = load_split(args.data, "train", opts, quiet=args.quiet)
    valid = load_split(args.data, "valid", opts, quiet=args.quiet)
    if METHODS.get(args.method).needs_bias and not train.has_bias:
        raise InputError("--method", f"{args.method} needs a bias column in the train manifest")
    if cfg.batch_size > len(train):
        raise InputError(
            "--set batch_size", f"{cfg.batch_size} exceeds the {len(train)} training images"
        )
    # All inputs are valid: from here on the run folder is written.
    out.mkdir(parents=True, exist_ok=True)
    resolved = {
        "method": args.method,
        "seed": args.seed,
        "preset": args.preset,
        "data": str(args.data),
        "data_options": {k: v for k, v in vars(opts).items()},
        **config_to_dict(cfg),
    }
    write_json_atomic(out / "config.json", resolved)
    ctx = RunContext(cfg, train, valid, out, args.seed, device, args.quiet, args.resume)
    result = run_method(args.method, ctx)
    save_pretrained(result.model, out / "model", saved_config(cfg.model))
    info = {k: v for k, v in result.info.items() if k != "b_hat"}
    if "b_hat" in result.info:
        b_hat = result.info["b_hat"]
        lines = ["path,label,bias,bias_hat"] + [
            f"{p},{int(y)},{int(b)},{int(h)}"
            for p, y, b, h in zip(train.paths, train.labels, train.bias, b_hat)
        ]
        write_text_atomic(out / "pseudo_bias.csv", "\n".join(lines) + "\n")
    selected = bool(cfg.select_metric) and cfg.select_metric in result.valid_metrics
    if cfg.select_metric and not selected:
        print(
            f"warning: valid split gives no {cfg.select_metric!r} (no bias column?): "
            "kept the final weights",
            file=sys.stderr,
        )
    metrics = {
        "method": args.method,
        "selection": f"best {cfg.select_metric} on valid" if selected else "final weights",
        "seed": args.seed,
        "train_seconds": result.train_seconds,
        "valid": result.valid_metrics,
        "select_metric": cfg.select_metric,
        **info,
    }
    write_json_atomic(out / "metrics.json", metrics)
    if not args.quiet:
        print(json.dumps({"valid": result.valid_metrics, **info}, default=str)[:2000])
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pbbl_cxr.evaluate import evaluate_run, load_run_model

    device = resolve_device(args.device)
    model = load_run_model(args.run)
    cfg = RunConfig(model=model.config)
    opts = _data_options(args, cfg)
    result = evaluate_run(args.run, args.data, args.split, opts, device=device, quiet=args.quiet)
    print(json.dumps(result, indent=2))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from pbbl_cxr.benchmark import run_benchmark
    from pbbl_cxr.methods import METHODS

    cfg = resolve_config(
        RunConfig, base=run_preset(args.preset), file=args.config, overrides=args.overrides
    ).check()
    for m in args.methods or []:
        METHODS.get(m)
    opts = _data_options(args, cfg)
    if args.data is not None:
        from pbbl_cxr.data import load_split

        for split in ("train", "valid", "test"):  # every bad row is reported before any run
            load_split(args.data, split, opts, quiet=args.quiet)
    device = resolve_device(args.device)
    results = run_benchmark(
        args.out,
        preset=args.preset,
        seeds=args.seeds,
        data=args.data,
        methods=args.methods,
        kinds=args.kinds,
        ratios=args.ratios,
        device=device,
        quiet=args.quiet,
        cfg=cfg,
        opts=opts,
    )
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    extra = results.get("extra", {})
    print(json.dumps({k: v for k, v in extra.items()}, indent=2), file=sys.stderr)
    return 0


COMMANDS = {
    "synth": cmd_synth,
    "build-splits": cmd_build_splits,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "benchmark": cmd_benchmark,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(run_main(main))
