"""The generator grid of issue #11: every method on every setting of ``protocol.py``.

From the repository root (about an hour on two CPU cores at ``--preset small``)::

    python packages/brats_grading/benchmarks/grid/run.py --out DIR [--preset small|tiny]
        [--workers N] [--threads N] [--settings NAME ...] [--methods M ...]
        [--seeds S ...] [--quiet]

:func:`run_grid` trains every (setting, method, seed) and writes ``DIR/results.json``
(one row per trained fold, the summary, the analysis; the shared results schema of
:mod:`medcommon.report`, readable by ``medcommon report``) and the out-of-fold P(HGG)
of every case in ``DIR/predictions.json.gz``; :func:`analyse` turns those predictions
into seed-averaged pooled AUCs, paired bootstrap intervals and verdicts, so the
statistics can be recomputed from the stored predictions (:func:`load_grid`) without
training again. Settings run in parallel worker processes (``--workers``), one
setting per task. ``--preset tiny`` runs the same code on tiny data and models (tests).

Every process, the main one and each worker (the pool's ``initializer``), pins its CPU
threads to ``--threads`` (default :data:`THREADS`) with :func:`medcommon.train.fix_threads`,
whatever ``OMP_NUM_THREADS`` says, so the numbers depend neither on the environment nor
on ``--workers``; ``results.json`` records the count (``protocol.threads``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from brats_grading import __version__
from brats_grading.config import SynthConfig, synth_preset
from brats_grading.data import discover, load_cases, make_split
from brats_grading.evaluate import predict_with_branches
from brats_grading.methods import METHODS
from brats_grading.synth import write_synthetic
from brats_grading.train import StageCache, fit_method, method_config
from medcommon import metrics as M
from medcommon.cli import add_methods_arg, run_main
from medcommon.errors import InputError
from medcommon.fs import atomic_path, read_json
from medcommon.metrics.bootstrap import bootstrap_aucs, percentile_ci
from medcommon.provenance import load_beside
from medcommon.report import make_results, write_results
from medcommon.report.plots import plot_heatmap, plot_intervals
from medcommon.train import fix_threads, pinned_map

PROTOCOL = "packages/brats_grading/benchmarks/grid/protocol.py"
PREDICTIONS = "predictions.json.gz"
PER_CASE = ("labels", "cases", "oof")
"""The per-case fields of a setting, stored in :data:`PREDICTIONS`, not in results.json."""
THREADS = 1
"""CPU threads per process (``--threads``): the committed grid ran one thread per worker."""


P = load_beside(__file__, "protocol.py", "brats_grid_protocol")


def scale(preset: str) -> dict[str, Any]:
    """The grid's sizes at ``preset``: ``small`` is the protocol's, ``tiny`` a smoke run."""
    if preset == "small":
        return {}
    if preset == "tiny":
        return {"synth": synth_preset("tiny"), "shape": (8, 16, 16), "steps": 4, "folds": 2}
    raise InputError("--preset", "the grid runs at 'small' (the protocol) or 'tiny' (tests)")


def run_setting(
    setting: P.Setting,
    methods: Sequence[str],
    *,
    seeds: Sequence[int] = P.SEEDS,
    folds: int = P.FOLDS,
    synth: SynthConfig = P.GRID_SYNTH,
    shape: Sequence[int] = P.GRID_SHAPE,
    steps: int = P.GRID_STEPS,
    preset: str = "small",
    device: str = "cpu",
    threads: int = THREADS,
) -> dict[str, Any]:
    """Train every method on one setting; returns its labels and out-of-fold predictions.

    ``oof[method]`` is ``(len(seeds), N)``: P(HGG) of each case from the model of the
    fold that held it out. ``rows`` holds one results row per trained fold: its test
    AUC, whether the fusion fell back to the mean, its training seconds. ``threads``:
    this process's CPU threads, pinned first (module docstring).
    """
    fix_threads(threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic(
            Path(tmp) / "data", synth, "2019", seed=P.DATA_SEED, quiet=True, cues=setting.cues
        )
        _, cases = discover(data)
        arrays = load_cases(cases, shape, quiet=True)
    labels = [c.label for c in cases]
    patients = [c.patient for c in cases]
    index = {c.name: i for i, c in enumerate(cases)}
    overrides = [f"folds={folds}", f"shape={list(shape)}", f"steps={steps}",
                 f"primary_steps={steps}"]  # fmt: skip
    _, base = method_config("cmg", preset, overrides=[*overrides, "fold=0"])
    splits = [make_split(cases, folds, f, base.split_seed) for f in range(folds)]
    oof = {m: np.full((len(seeds), len(cases)), np.nan) for m in methods}
    rows: list[dict[str, Any]] = []
    cache = StageCache()
    for si, seed in enumerate(seeds):
        for f, split in enumerate(splits):
            cache.clear()
            tr = [index[n] for n in split["train"]]
            te = [index[n] for n in split["test"]]
            for name in methods:
                method, cfg = method_config(name, preset, overrides=[*overrides, f"fold={f}"])
                info = fit_method(
                    method, cfg, arrays, labels, tr, patients=patients, seed=seed,
                    device=device, quiet=True, cache=cache,
                )  # fmt: skip
                probs, _ = predict_with_branches(info.model, arrays[te])
                oof[name][si, te] = probs
                rows.append({
                    "setting": setting.name, "method": name, "seed": seed, "fold": f,
                    "metrics": {"auc": M.auc([labels[i] for i in te], probs)},
                    "fallback": "fallback" in (info.fusion or {}),
                    "train_seconds": info.train_seconds,
                })  # fmt: skip
    return {
        "setting": setting.name,
        "params": asdict(setting),
        "labels": labels,
        "cases": [c.name for c in cases],
        "oof": {m: v.tolist() for m, v in oof.items()},
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _run_one(args: tuple) -> dict[str, Any]:
    setting, methods, kwargs = args
    return run_setting(setting, methods, **kwargs)


def run_grid(
    out: str | Path,
    *,
    preset: str = "small",
    settings: Sequence[P.Setting] = P.SETTINGS,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = P.SEEDS,
    workers: int = 1,
    threads: int = THREADS,
    bootstrap: int = P.BOOTSTRAP,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the grid and write ``out/results.json``, ``out/predictions.json.gz``,
    ``out/report.md`` and figures; returns the results with the predictions (as
    :func:`load_grid` reads them back).

    ``preset="small"`` is the protocol's grid; ``"tiny"`` runs the same code on tiny
    data and models (tests). ``settings``/``methods``/``seeds`` narrow the run.
    ``threads``: CPU threads of every process, whatever ``workers`` is.
    """
    fix_threads(threads)
    methods = list(methods or METHODS.names())
    for m in methods:
        METHODS.get(m)
    if P.REFERENCE not in methods:
        raise InputError("--methods", f"the grid compares against {P.REFERENCE}: include it")
    kwargs = scale(preset) | {"seeds": tuple(seeds), "preset": preset, "threads": threads}
    out = Path(out)
    t0 = time.perf_counter()
    tasks = [(s, methods, kwargs) for s in settings]
    done = pinned_map(_run_one, tasks, workers=workers, threads=threads,
                      desc="grid settings", quiet=quiet)  # fmt: skip
    rows = [row for s in done for row in s.pop("rows")]
    results = make_results(
        "brats-grading", __version__, preset, list(seeds), rows, sources=[PROTOCOL]
    )
    results |= {
        "kind": "grid",
        "methods": methods,
        "protocol": {
            "folds": kwargs.get("folds", P.FOLDS),
            "bootstrap": bootstrap,
            "level": P.LEVEL,
            "data_seed": P.DATA_SEED,
            "threads": threads,
        },
        "settings": done,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    results["analysis"] = analyse(results, bootstrap=bootstrap)
    write_grid(out, results)
    write_grid_report(out, results)
    return results


def write_grid(out: str | Path, results: dict[str, Any]) -> None:
    """``out/results.json`` without the settings' per-case fields (:data:`PER_CASE`), and
    those in ``out/predictions.json.gz`` (gzip'd JSON ``{"settings": [{setting, labels,
    cases, oof}]}``), each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    light = [{k: v for k, v in s.items() if k not in PER_CASE} for s in results["settings"]]
    per_case = [
        {"setting": s["setting"], **{k: s[k] for k in PER_CASE}} for s in results["settings"]
    ]
    data = json.dumps({"settings": per_case}, separators=(",", ":")).encode("utf-8")
    with atomic_path(out / PREDICTIONS) as tmp:
        tmp.write_bytes(gzip.compress(data, mtime=0))
    write_results(out, {**results, "settings": light, "predictions": PREDICTIONS})


def load_grid(folder: str | Path) -> dict[str, Any]:
    """A grid's ``results.json`` with each setting's per-case predictions merged back in."""
    folder = Path(folder)
    results = read_json(folder / "results.json")
    per_case = json.loads(gzip.decompress((folder / results["predictions"]).read_bytes()))
    by_name = {s["setting"]: s for s in per_case["settings"]}
    results["settings"] = [{**s, **by_name[s["setting"]]} for s in results["settings"]]
    return results


def analyse(results: dict[str, Any], bootstrap: int = P.BOOTSTRAP) -> dict[str, Any]:
    """Seed-averaged pooled AUCs with intervals, and CMG's paired differences + verdicts.

    Returns ``{setting: {"auc": {m: [est, lo, hi]}, "diff": {m: [est, lo, hi, verdict]}}}``.
    """
    out: dict[str, Any] = {}
    for s in results["settings"]:
        y = np.asarray(s["labels"])
        oof = {m: np.asarray(v, dtype=float) for m, v in s["oof"].items()}
        point = {m: float(np.mean([M.auc(y, row) for row in v])) for m, v in oof.items()}
        boot = bootstrap_aucs(y, oof, n=bootstrap, seed=P.DATA_SEED)
        auc = {m: [point[m], *percentile_ci(boot[m], P.LEVEL)] for m in oof}
        diff = {}
        for m in oof:
            if m == P.REFERENCE:
                continue
            lo, hi = percentile_ci(boot[P.REFERENCE] - boot[m], P.LEVEL)
            diff[m] = [point[P.REFERENCE] - point[m], lo, hi, P.verdict(lo, hi)]
        out[s["setting"]] = {"auc": auc, "diff": diff}
    return out


def _fmt(v: Sequence) -> str:
    return f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"


def write_grid_report(out: Path, results: dict[str, Any]) -> Path:
    """``report.md`` with the guidance ablation first, then verdicts and AUCs, and figures."""
    a = results["analysis"]
    settings = list(a)
    methods = results["methods"]
    others = [m for m in methods if m != P.REFERENCE]
    head, ablation = P.HEADLINE
    lines = [
        "# brats-grading: the generator grid (issue #11)",
        "",
        f"`brats-grading` {results['version']}, preset `{results['preset']}`, seeds "
        f"{', '.join(map(str, results['seeds']))}, {results['protocol']['folds']} folds, "
        f"{len(settings)} settings x {len(methods)} methods; protocol fixed before the runs in "
        f"`benchmarks/grid/protocol.py`. AUC: mean over seeds of the pooled out-of-fold AUC; "
        f"[95% interval]: {results['protocol']['bootstrap']} stratified case resamples, shared by "
        f"all methods of a setting (paired). Wall time {results['wall_seconds'] / 60:.1f} min.",
        "",
    ]
    counts = {m: {"wins": 0, "ties": 0, "loses": 0} for m in others}
    for s in settings:
        for m, d in a[s]["diff"].items():
            counts[m][d[3]] += 1
    if ablation in others:
        lines += [
            f"## Headline: the guidance ablation, {head} − {ablation}",
            "",
            f"| setting | {head} AUC | {ablation} AUC | difference [95% CI] | verdict |",
            "|---|---|---|---|---|",
        ]
        for s in settings:
            c, n, d = a[s]["auc"][head], a[s]["auc"][ablation], a[s]["diff"][ablation]
            lines.append(
                f"| {s} | {c[0]:.3f} [{c[1]:.3f}, {c[2]:.3f}] | {n[0]:.3f} [{n[1]:.3f}, {n[2]:.3f}] "
                f"| {_fmt(d)} | {d[3]} |"
            )
        k = counts[ablation]
        lines += [
            "",
            f"Guidance: CMG wins in {k['wins']}, ties in {k['ties']} and loses in {k['loses']} of "
            f"{len(settings)} settings.",
            "",
            "![guidance.png](guidance.png)",
            "",
        ]
    lines += [
        "## CMG against each method: wins / ties / loses over the settings",
        "",
        "| CMG vs | wins | ties | loses |",
        "|---|---|---|---|",
        *(f"| {m} | {c['wins']} | {c['ties']} | {c['loses']} |" for m, c in counts.items()),
        "",
        "## Paired differences, CMG minus each method [95% CI], per setting",
        "",
        "| setting | " + " | ".join(others) + " |",
        "|---|" + "---|" * len(others),
    ]
    for s in settings:
        cells = [f"{_fmt(a[s]['diff'][m])} {a[s]['diff'][m][3]}" for m in others]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![differences.png](differences.png)",
        "",
        "## AUC per setting and method [95% CI]",
        "",
        "| setting | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for s in settings:
        cells = [f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" for v in (a[s]["auc"][m] for m in methods)]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    fallbacks = sum(r["fallback"] for r in results["rows"])
    n_runs = len(results["rows"])
    lines += [
        "",
        f"Reliability fusion fell back to the plain mean in {fallbacks} of {n_runs} runs.",
    ]
    if ablation in others:
        plot_intervals(
            {s: {f"{head} − {ablation}": tuple(a[s]["diff"][ablation][:3])} for s in settings},
            out / "guidance.png",
            f"guidance ablation: {head} − {ablation}, paired 95% CI",
            "AUC difference (right of 0: guidance helps)",
        )
    plot_heatmap(
        [[a[s]["diff"][m][0] for m in others] for s in settings],
        settings,
        others,
        out / "differences.png",
        "AUC(cmg) − AUC(method) per setting",
        vmin=-0.1,
        vmax=0.1,
    )
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """The command line (module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for results and figures")
    p.add_argument("--preset", default="small", choices=("small", "tiny"),
                   help="small: the protocol; tiny: a smoke run")  # fmt: skip
    add_methods_arg(p, METHODS)
    p.add_argument("--workers", type=int, default=1, help="settings run in parallel processes")
    p.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help=f"CPU threads per process, pinned whatever OMP_NUM_THREADS says (default {THREADS})",
    )
    p.add_argument("--settings", nargs="+", default=None, help="only these setting names")
    p.add_argument("--seeds", type=int, nargs="+", default=list(P.SEEDS),
                   help=f"only these seeds (default: the protocol's, {' '.join(map(str, P.SEEDS))})")  # fmt: skip
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    settings = P.SETTINGS
    if args.settings:
        by_name = {s.name: s for s in settings}
        unknown = [n for n in args.settings if n not in by_name]
        if unknown:
            raise InputError(
                "--settings", f"unknown {unknown[0]!r}; choose from {', '.join(by_name)}"
            )
        settings = tuple(by_name[n] for n in args.settings)
    if args.workers < 1:
        raise InputError("--workers", "must be >= 1")
    run_grid(
        args.out, preset=args.preset, settings=settings, methods=args.methods,
        seeds=args.seeds, workers=args.workers, threads=args.threads, quiet=args.quiet,
    )  # fmt: skip
    print(f"wrote {args.out}/results.json, {PREDICTIONS} and report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
