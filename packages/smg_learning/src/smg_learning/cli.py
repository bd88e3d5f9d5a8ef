"""The ``smg-learning`` console script: a table of commands, each a thin call into the library.

Commands: ``synth``, ``train``, ``evaluate``, ``sample``, ``predict``, ``benchmark``
(see the README). Every input is validated before anything is written; bad input is
one ``error: <where>: <problem>`` line and exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medcommon.cli import (
    App,
    add_benchmark_args,
    add_config_args,
    add_evaluate_args,
    add_synth_args,
    add_train_args,
)
from medcommon.errors import InputError
from smg_learning import __version__
from smg_learning.strategies import STRATEGIES

TASKS = ["prostate", "fundus"]

app = App(
    "smg-learning",
    "Continual segmentation across sites: SMG-Learning (PGA + site-modulated diffusion replay) "
    "and its baselines.",
    __version__,
)


def _print_matrix(metrics: dict) -> None:
    cols = metrics["columns"]
    width = max(8, *(len(c) for c in cols))
    print("stage".ljust(18) + "".join(c.rjust(width + 1) for c in cols))
    for name, row in zip(metrics["stages"], metrics["dice_matrix"]):
        print(name.ljust(18) + "".join(f"{v:.3f}".rjust(width + 1) for v in row))
    print(
        f"memorizability {metrics['memorizability']:.3f}  generalizability "
        f"{metrics['generalizability']:.3f}  bwt {metrics['bwt']:+.3f}  hd95 {metrics['hd95']:.2f}"
    )


def _device(name: str) -> str:
    from medcommon.train.accelerator import resolve_device

    return resolve_device(name)


# ---------------------------------------------------------------------------- synth
def _synth_args(p: argparse.ArgumentParser) -> None:
    add_synth_args(p)
    p.add_argument("--task", default="prostate", choices=TASKS, help="layout (default prostate)")
    p.add_argument("--sites", type=int, default=None, help="number of sites (default: preset)")


@app.command("synth", "write a synthetic multi-site dataset in the public layout", args=_synth_args)
def cmd_synth(args) -> int:
    from smg_learning.synth import generate

    out = generate(
        args.out,
        task=args.task,
        preset=args.preset,
        seed=args.seed,
        num_sites=args.sites,
        quiet=args.quiet,
    )
    print(f"wrote synthetic {args.task} data to {out}")
    return 0


# ---------------------------------------------------------------------------- train
#: flags that merely set a config field (comma lists): overrides before the ``--set`` ones
TRAIN_SHORTHANDS = {"sites": "sites", "heldout": "heldout"}


def _train_args(p: argparse.ArgumentParser) -> None:
    add_train_args(p, STRATEGIES, "smg")
    p.add_argument(
        "--sites", default=None, help="training order, e.g. RUNMC,BMC,I2CVB (default: all)"
    )
    p.add_argument("--heldout", default=None, help="sites never trained on, e.g. BIDMC,HK")
    p.add_argument(
        "--smd-from", type=Path, default=None, help="reuse the SMD stages of another run"
    )


def _check_site_list(flag: str, text: str | None) -> None:
    """A ``--sites``/``--heldout`` value names every site: no empty name (``RUNMC,,BMC``,
    ``,``), which the comma-list parser would drop without a word."""
    if text is not None and any(not name.strip() for name in text.split(",")):
        raise InputError(flag, f"empty site name in {text!r}; expected e.g. RUNMC,BMC")


@app.command("train", "train one strategy over the sites in sequence", args=_train_args)
def cmd_train(args) -> int:
    from smg_learning.train import train_run

    _check_site_list("--sites", args.sites)
    _check_site_list("--heldout", args.heldout)
    metrics = train_run(app.spec(args, shorthands=TRAIN_SHORTHANDS))
    if not args.quiet:
        _print_matrix(metrics)
    print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------------------- evaluate
@app.command("evaluate", "recompute the stage x site Dice matrix of a run", args=add_evaluate_args)
def cmd_evaluate(args) -> int:
    from smg_learning.evaluate import evaluate_run

    result = evaluate_run(args.run, args.data, args.split, _device(args.device))
    if not args.quiet:
        _print_matrix(result)
    print(f"wrote {args.run / f'eval-{args.split}.json'}")
    return 0


# --------------------------------------------------------------------------- sample
def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, help="a run trained with smg or smd-replay")
    p.add_argument("--site", required=True, help="site name (its prompt)")
    p.add_argument("--n", type=int, default=8, help="number of pairs (default 8)")
    p.add_argument("--out", type=Path, required=True, help="folder for image/ and mask/ PNGs")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--sampler", default="ddim", help="ddim or ddpm (all training timesteps)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@app.command(
    "sample", "generate image/mask PNG pairs of one site with the run's SMD", args=_sample_args
)
def cmd_sample(args) -> int:
    from smg_learning.sample import sample_site

    sample_site(
        args.run,
        args.site,
        args.out,
        n=args.n,
        steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        device=_device(args.device),
    )
    print(f"wrote {args.n} image/mask pairs to {args.out}")
    return 0


# -------------------------------------------------------------------------- predict
def _predict_args(p: argparse.ArgumentParser) -> None:
    # medcommon's add_predict_args writes one file (or stdout); here --out is a folder
    p.add_argument("--run", type=Path, required=True, help="a run folder written by train")
    p.add_argument(
        "paths",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="volumes (.nii, .nii.gz, .mha; prostate runs) or PNG/JPEG images (fundus runs), "
        "or folders searched recursively",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="folder for the masks (default RUN/predictions)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")


@app.command(
    "predict",
    "write a mask file per input volume or image (<stem>_mask.nii.gz / _mask.png)",
    args=_predict_args,
)
def cmd_predict(args) -> int:
    from smg_learning.predict import predict_paths

    written = predict_paths(args.run, args.paths, args.out, _device(args.device))
    if not args.quiet:
        for path in written:
            print(path)
    print(f"wrote {len(written)} masks to {written[0].parent}")
    return 0


# ------------------------------------------------------------------------ benchmark
def benchmark_args(p: argparse.ArgumentParser) -> None:
    """The ``benchmark`` flags (also parsed by the experiments in ``benchmarks/``)."""
    add_benchmark_args(p)
    add_config_args(p)  # applied to every row's run config, before the row's own change
    p.add_argument("--task", default="prostate", choices=TASKS, help="synthetic task")
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated subset of: {','.join(STRATEGIES.names())},smg-alpha0,"
        "smg-sym,smg-adam (default: the preset's rows; all but for demo)",
    )
    p.add_argument("--sites", default=None, help="training order (default: preset's)")
    p.add_argument("--heldout", default=None, help="held-out sites (default: preset's)")


@app.command("benchmark", "all strategies over seeds, with the claims checked", args=benchmark_args)
def cmd_benchmark(args) -> int:
    from smg_learning.benchmark import BenchSpec, run_benchmark

    run_benchmark(BenchSpec.from_args(args))
    print(f"wrote {args.out / 'results.json'}, {args.out / 'report.md'} and plots")
    return 0


main, entry, build_parser = app.main, app.entry, app.build_parser

__all__ = ["app", "build_parser", "entry", "main"]

if __name__ == "__main__":  # python -m smg_learning.cli ... (as the console script)
    raise SystemExit(entry())
