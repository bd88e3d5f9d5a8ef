"""``grid``: every method on every generator setting of :mod:`brats_grading.protocol`.

:func:`run_grid` trains and stores the out-of-fold P(HGG) of every (setting,
method, seed) in ``results.json``; :func:`analyse` turns those predictions into
seed-averaged pooled AUCs, paired bootstrap intervals and verdicts, so the
statistics can be recomputed from the stored predictions without training again.
Settings run in parallel worker processes (``workers``), one setting per task.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from brats_grading import __version__
from brats_grading import protocol as P
from brats_grading.config import SynthConfig, synth_preset
from brats_grading.data import discover, load_cases, make_split
from brats_grading.evaluate import predict_with_branches
from brats_grading.methods import METHODS
from brats_grading.synth import write_synthetic
from brats_grading.train import StageCache, fit_method, method_config
from medcommon import metrics as M
from medcommon.errors import InputError
from medcommon.fs import atomic_path
from medcommon.metrics.bootstrap import bootstrap_aucs, percentile_ci
from medcommon.report.plots import plot_heatmap, plot_intervals


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
) -> dict[str, Any]:
    """Train every method on one setting; returns its labels and out-of-fold predictions.

    ``oof[method]`` is ``(len(seeds), N)``: P(HGG) of each case from the model of the
    fold that held it out. ``runs`` holds per-fold test AUCs and fusion fallbacks.
    """
    torch.set_num_threads(1)
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
    runs: list[dict[str, Any]] = []
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
                runs.append({
                    "method": name, "seed": seed, "fold": f,
                    "auc": M.auc([labels[i] for i in te], probs),
                    "fallback": "fallback" in (info.fusion or {}),
                    "train_seconds": info.train_seconds,
                })  # fmt: skip
    return {
        "setting": setting.name,
        "params": asdict(setting),
        "labels": labels,
        "cases": [c.name for c in cases],
        "oof": {m: v.tolist() for m, v in oof.items()},
        "runs": runs,
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
    bootstrap: int = P.BOOTSTRAP,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the grid and write ``out/results.json``, ``out/report.md`` and figures.

    ``preset="small"`` is the protocol's grid; ``"tiny"`` runs the same code on tiny
    data and models (tests). ``settings``/``methods``/``seeds`` narrow the run.
    """
    methods = list(methods or METHODS.names())
    for m in methods:
        METHODS.get(m)
    if P.REFERENCE not in methods:
        raise InputError("--methods", f"the grid compares against {P.REFERENCE}: include it")
    if preset == "tiny":
        kwargs = dict(synth=synth_preset("tiny"), shape=(8, 16, 16), steps=4, folds=2)
    elif preset == "small":
        kwargs = {}
    else:
        raise InputError("--preset", "the grid runs at 'small' (the protocol) or 'tiny' (tests)")
    kwargs |= {"seeds": tuple(seeds), "preset": preset}
    out = Path(out)
    t0 = time.perf_counter()
    tasks = [(s, methods, kwargs) for s in settings]
    done: list[dict[str, Any]] = []
    bar = tqdm(total=len(tasks), desc="grid settings", disable=quiet)
    if workers > 1:
        ctx = get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for res in pool.map(_run_one, tasks):
                done.append(res)
                bar.update()
    else:
        for task in tasks:
            done.append(_run_one(task))
            bar.update()
    bar.close()
    results = {
        "package": "brats-grading",
        "version": __version__,
        "kind": "grid",
        "preset": preset,
        "seeds": list(seeds),
        "methods": methods,
        "protocol": {
            "folds": kwargs.get("folds", P.FOLDS),
            "bootstrap": bootstrap,
            "level": P.LEVEL,
            "data_seed": P.DATA_SEED,
        },
        "settings": done,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    results["analysis"] = analyse(results, bootstrap=bootstrap)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
    write_grid_report(out, results)
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
        f"`brats_grading/protocol.py`. AUC: mean over seeds of the pooled out-of-fold AUC; "
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
    fallbacks = sum(r["fallback"] for s in results["settings"] for r in s["runs"])
    n_runs = sum(len(s["runs"]) for s in results["settings"])
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
