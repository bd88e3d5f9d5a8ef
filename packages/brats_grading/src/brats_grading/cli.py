"""The ``brats-grading`` console script: synth, train, evaluate, predict, benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from brats_grading import __version__
from brats_grading.methods import METHODS
from medcommon.cli import (
    add_benchmark_args,
    add_evaluate_args,
    add_synth_args,
    add_train_args,
    make_parser,
    run_main,
    subparsers,
)
from medcommon.errors import InputError


def _parser():
    parser = make_parser(
        "brats-grading",
        "HGG vs LGG grading from BraTS MRI with cross-modality guidance and dual attention.",
        __version__,
    )
    sub = subparsers(parser)
    p = sub.add_parser("synth", help="write a synthetic BraTS-like training folder")
    add_synth_args(p)
    p.add_argument(
        "--layout", default="2019", help="2018, 2019 (HGG/ LGG/) or 2020 (name_mapping.csv)"
    )
    p = sub.add_parser("train", help="train one method on one fold")
    add_train_args(p, METHODS.names(), "cmg")
    p.add_argument("--folds", type=int, default=None, help="number of folds K (default: preset)")
    p.add_argument("--fold", type=int, default=None, help="held-out fold k in 0..K-1 (default 0)")
    p = sub.add_parser("evaluate", help="metrics of a run on its train or test split")
    add_evaluate_args(p)
    p = sub.add_parser("predict", help="print P(HGG) for case folders")
    p.add_argument("--run", type=Path, required=True, help="a run folder written by train")
    p.add_argument(
        "cases", type=Path, nargs="+", help="case folders holding <case>_{t1,t1ce,t2,flair}.nii.gz"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("benchmark", help="all methods, k-fold x seeds, on synthetic data")
    add_benchmark_args(p)
    p.add_argument("--folds", type=int, default=None, help="folds to run (default: preset)")
    p.add_argument("--methods", nargs="+", default=None, help="subset of methods (default all)")
    p.add_argument(
        "--memory-probe",
        action="store_true",
        help="also measure one full-preset step's peak memory (slow)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "synth":
        from brats_grading.config import synth_preset
        from brats_grading.synth import write_synthetic

        write_synthetic(args.out, synth_preset(args.preset), args.layout, args.seed, args.quiet)
        print(f"wrote {args.out} (layout {args.layout}, preset {args.preset}, seed {args.seed})")
        return 0
    if args.command == "train":
        from brats_grading.config import check_preset
        from brats_grading.train import train_run

        check_preset(args.preset)
        overrides = list(args.overrides)
        if args.folds is not None:
            overrides.append(f"folds={args.folds}")
        if args.fold is not None:
            overrides.append(f"fold={args.fold}")
        metrics = train_run(
            args.data, args.out, args.method, args.preset, config_file=args.config,
            overrides=overrides, seed=args.seed, device=args.device, quiet=args.quiet,
            resume=args.resume, checkpoint_every=args.checkpoint_every,
        )  # fmt: skip
        test = metrics["test"]
        print(
            f"{args.method} fold {metrics['fold']}/{metrics['folds']}: "
            + " ".join(f"{k}={v:.3f}" for k, v in test.items())
        )
        return 0
    if args.command == "evaluate":
        from brats_grading.evaluate import evaluate_run

        res = evaluate_run(args.run, args.data, args.split, quiet=args.quiet)
        print(
            f"{args.split} (n={res['n']}): "
            + " ".join(f"{k}={v:.3f}" for k, v in res["metrics"].items())
        )
        return 0
    if args.command == "predict":
        from brats_grading.evaluate import THRESHOLD, predict_cases

        for name, p in predict_cases(args.run, args.cases, quiet=args.quiet).items():
            print(f"{name}\tp_hgg={p:.4f}\t{'HGG' if p >= THRESHOLD else 'LGG'}")
        return 0
    if args.command == "benchmark":
        from brats_grading.benchmark import run_benchmark
        from brats_grading.config import check_preset

        check_preset(args.preset)
        if args.methods:
            for m in args.methods:
                METHODS.get(m)
        run_benchmark(
            args.out, args.preset, args.seeds, data=args.data, device=args.device,
            quiet=args.quiet, folds=args.folds, methods=args.methods,
            memory_probe=args.memory_probe,
        )  # fmt: skip
        print(f"wrote {args.out}/results.json and report.md")
        return 0
    raise InputError("command", f"unknown command {args.command}")  # pragma: no cover


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(run_main(main))
