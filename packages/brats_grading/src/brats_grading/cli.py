"""The ``brats-grading`` console script: synth, train, evaluate, predict, benchmark.

A table of commands on :class:`medcommon.cli.App`; each ``cmd_*`` is a thin call
into the library and prints a one-line summary. ``--method`` choices and help
come from :data:`brats_grading.methods.METHODS`.
"""

from __future__ import annotations

from brats_grading import __version__
from brats_grading.methods import METHODS
from medcommon.cli import (
    App,
    add_benchmark_args,
    add_evaluate_args,
    add_methods_arg,
    add_predict_args,
    add_synth_args,
    add_train_args,
)

app = App(
    "brats-grading",
    "HGG vs LGG grading from BraTS MRI with cross-modality guidance and dual attention.",
    __version__,
)


def _synth_args(p) -> None:
    add_synth_args(p)
    p.add_argument(
        "--layout", default="2019", help="2018, 2019 (HGG/ LGG/) or 2020 (name_mapping.csv)"
    )


def _train_args(p) -> None:
    add_train_args(p, METHODS, "cmg")
    p.add_argument("--folds", type=int, default=None, help="number of folds K (default: preset)")
    p.add_argument("--fold", type=int, default=None, help="held-out fold k in 0..K-1 (default 0)")


def _predict_args(p) -> None:
    add_predict_args(p, "case folders holding <case>_{t1,t1ce,t2,flair}.nii.gz")
    p.epilog = "Without --out: one line per case, <case>\\tp_hgg=<P(HGG)>\\t<HGG|LGG>."


def _benchmark_args(p) -> None:
    add_benchmark_args(p)
    p.add_argument("--folds", type=int, default=None, help="folds to run (default: preset)")
    add_methods_arg(p, METHODS)


@app.command("synth", "write a synthetic BraTS-like training folder", args=_synth_args)
def cmd_synth(args) -> int:
    from brats_grading.config import synth_preset
    from brats_grading.synth import write_synthetic

    write_synthetic(args.out, synth_preset(args.preset), args.layout, args.seed, args.quiet)
    print(f"wrote {args.out} (layout {args.layout}, preset {args.preset}, seed {args.seed})")
    return 0


@app.command("train", "train one method on one fold", args=_train_args)
def cmd_train(args) -> int:
    from brats_grading.train import train_run

    metrics = train_run(app.spec(args, shorthands={"folds": "folds", "fold": "fold"}))
    print(
        f"{metrics['method']} fold {metrics['fold']}/{metrics['folds']}: "
        + " ".join(f"{k}={v:.3f}" for k, v in metrics["test"].items())
    )
    return 0


@app.command("evaluate", "metrics of a run on its train or test split", args=add_evaluate_args)
def cmd_evaluate(args) -> int:
    from brats_grading.evaluate import evaluate_run
    from medcommon.train.accelerator import resolve_device

    res = evaluate_run(
        args.run, args.data, args.split, quiet=args.quiet, device=resolve_device(args.device)
    )
    print(
        f"{args.split} (n={res['n']}): "
        + " ".join(f"{k}={v:.3f}" for k, v in res["metrics"].items())
    )
    return 0


@app.command("predict", "P(HGG) of case folders (stdout, or a CSV with --out)", args=_predict_args)
def cmd_predict(args) -> int:
    from brats_grading.evaluate import grade, predict_cases, write_predictions
    from medcommon.train.accelerator import resolve_device

    probs = predict_cases(
        args.run, args.paths, quiet=args.quiet, device=resolve_device(args.device)
    )
    if args.out is not None:
        write_predictions(args.out, probs)
        print(f"wrote {args.out} ({len(probs)} cases)")
    else:
        for name, p in probs.items():
            print(f"{name}\tp_hgg={p:.4f}\t{grade(p)}")
    return 0


@app.command("benchmark", "all methods, k-fold x seeds, on synthetic data", args=_benchmark_args)
def cmd_benchmark(args) -> int:
    from brats_grading.benchmark import run_benchmark

    run_benchmark(
        args.out, args.preset, args.seeds, data=args.data, device=args.device,
        quiet=args.quiet, folds=args.folds, methods=args.methods, threads=args.threads,
    )  # fmt: skip
    print(f"wrote {args.out}/results.json and report.md")
    return 0


main, entry, build_parser = app.main, app.entry, app.build_parser

if __name__ == "__main__":  # python -m brats_grading.cli
    entry()
