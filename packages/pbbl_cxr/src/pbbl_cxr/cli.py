"""The ``pbbl-cxr`` console script: synth, build-splits, train, evaluate, benchmark, predict.

A table of commands on :class:`medcommon.cli.App`; each handler is a thin call into the
library. Every input is checked (manifests parsed, images decoded) before anything is
written, so bad input exits with code 2, one ``error:`` line and no output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medcommon.cli import (
    App,
    add_benchmark_args,
    add_config_args,
    add_evaluate_args,
    add_methods_arg,
    add_predict_args,
    add_synth_args,
    add_train_args,
)
from medcommon.config import resolve_config
from medcommon.train.accelerator import resolve_device
from pbbl_cxr import __version__
from pbbl_cxr.claims import PBBL_ORACLE_SELECT
from pbbl_cxr.config import RunConfig, SynthConfig, run_preset, synth_preset
from pbbl_cxr.data import data_options
from pbbl_cxr.methods import METHODS

app = App(
    "pbbl-cxr",
    "Pseudo bias-balanced learning for debiased chest X-ray classification.",
    __version__,
)


# -------------------------------------------------------------------- shared flags
def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.5 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0.5, 1), got {value}")
    return value


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


# ------------------------------------------------------------------------ commands
def _synth_args(p: argparse.ArgumentParser) -> None:
    add_synth_args(p)
    p.add_argument("--kind", choices=["gbp", "sbp"], default="gbp", help="layout (default gbp)")
    p.add_argument(
        "--bias-ratio", type=_ratio, default=0.95, help="share of bias-aligned train samples"
    )
    add_config_args(p)


@app.command("synth", "write a synthetic GbP/SbP-style dataset", args=_synth_args)
def cmd_synth(args: argparse.Namespace) -> int:
    from pbbl_cxr.synth import generate

    base = synth_preset(args.preset, kind=args.kind, bias_ratio=args.bias_ratio)
    cfg = resolve_config(SynthConfig, base=base, file=args.config, overrides=args.overrides)
    generate(args.out, cfg, seed=args.seed, quiet=args.quiet)
    print(f"wrote {cfg.kind} dataset ({cfg.n_train}/{cfg.n_valid}/{cfg.n_test}) to {args.out}")
    return 0


def _splits_args(p: argparse.ArgumentParser) -> None:
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


@app.command(
    "build-splits", "biased, patient-disjoint splits from NIH/MIMIC metadata", args=_splits_args
)
def cmd_build_splits(args: argparse.Namespace) -> int:
    from pbbl_cxr.splits import build_splits

    paths = build_splits(
        args.out,
        args.nih_csv,
        args.kind,
        bias_ratio=args.bias_ratio,
        sizes=(args.n_train, args.n_valid, args.n_test),
        finding=args.finding,
        bias_value=args.bias_value,
        mimic_chexpert=args.mimic_chexpert,
        mimic_metadata=args.mimic_metadata,
        nih_prefix=args.nih_prefix,
        mimic_prefix=args.mimic_prefix,
        seed=args.seed,
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    add_train_args(p, METHODS, "pbbl")
    _add_data_args(p)


@app.command("train", "train one method on a dataset folder", args=_train_args)
def cmd_train(args: argparse.Namespace) -> int:
    from pbbl_cxr.run import train_run

    metrics = train_run(app.spec(args))
    if not args.quiet:
        shown = {k: v for k, v in metrics.items() if k not in ("method", "seed", "selection")}
        print(json.dumps(shown, default=str)[:2000])
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    add_evaluate_args(p)
    _add_data_args(p)


@app.command(
    "evaluate",
    "score a run's model on a split (writes RUN/eval-SPLIT.json)",
    args=_evaluate_args,
)
def cmd_evaluate(args: argparse.Namespace) -> int:
    from pbbl_cxr.evaluate import evaluate_run

    opts = data_options(vars(args))  # at the run model's image size (evaluate_run)
    device = resolve_device(args.device)
    result = evaluate_run(args.run, args.data, args.split, opts, device=device, quiet=args.quiet)
    print(json.dumps(result, indent=2))
    return 0


def _benchmark_args(p: argparse.ArgumentParser) -> None:
    add_benchmark_args(p)
    add_methods_arg(p, [*METHODS.names(), PBBL_ORACLE_SELECT])
    p.add_argument(
        "--kinds", nargs="+", choices=["gbp", "sbp"], default=None, help="grid (default: preset's)"
    )
    p.add_argument("--ratios", nargs="+", type=_ratio, default=None, help="grid bias ratios")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes for the (setting, seed) jobs, each pinned to --threads (the numbers "
        "do not depend on it)",
    )
    add_config_args(p)
    _add_data_args(p)


@app.command("benchmark", "all methods x GbP/SbP x bias ratios x seeds", args=_benchmark_args)
def cmd_benchmark(args: argparse.Namespace) -> int:
    from pbbl_cxr.benchmark import run_benchmark

    base = run_preset(args.preset)
    cfg = resolve_config(RunConfig, base=base, file=args.config, overrides=args.overrides).check()
    results = run_benchmark(
        args.out,
        preset=args.preset,
        seeds=args.seeds,
        data=args.data,
        methods=args.methods,
        kinds=args.kinds,
        ratios=args.ratios,
        workers=args.workers,
        threads=args.threads,
        device=resolve_device(args.device),
        quiet=args.quiet,
        cfg=cfg,
        opts=data_options(vars(args)),  # at the model's image size (run_benchmark)
    )
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    print(json.dumps(results.get("extra", {}), indent=2), file=sys.stderr)
    return 0


def _predict_args(p: argparse.ArgumentParser) -> None:
    add_predict_args(p, "DICOM, PNG or JPEG files, or folders of them (searched recursively)")


@app.command(
    "predict",
    "p(y=1) of new images with a trained run (CSV: path,p_y1)",
    args=_predict_args,
)
def cmd_predict(args: argparse.Namespace) -> int:
    from pbbl_cxr.predict import predict_files, write_predictions

    rows = predict_files(args.run, args.paths, device=resolve_device(args.device), quiet=args.quiet)
    text = write_predictions(rows, args.out)
    if args.out is None:
        sys.stdout.write(text)
    elif not args.quiet:
        print(f"wrote {len(rows)} predictions to {args.out}")
    return 0


main, entry, build_parser = app.main, app.entry, app.build_parser

if __name__ == "__main__":  # python -m pbbl_cxr.cli, as the console script
    entry()
