"""``benchmark``: every method, stratified k-fold by patient x seeds, on synthetic data.

One row per (method, seed, fold) holds that fold's test metrics; the summary is the
mean ± sample std over all folds and seeds. The claims of :mod:`brats_grading.claims`
are decided on the rows, paired by (seed, fold) (:func:`medcommon.report.check_claims`);
``headline.png`` (AUC per method, every run a dot) leads the figures. What a preset
runs is its ``benchmark`` section (:class:`brats_grading.config.BenchmarkConfig`):
``demo`` runs the central claim only.
Throughput (training volumes per second, one volume = one case with its four
sequences) of CMG and early fusion is measured in the same run.

Same code, same seeds, same numbers: :func:`run_benchmark` first pins its CPU threads
(``threads``, the CLI's ``--threads``, default
:data:`medcommon.cli.args.BENCHMARK_THREADS`) with :func:`medcommon.train.fix_threads`,
whatever ``OMP_NUM_THREADS`` says, and turns on torch's deterministic kernels;
``results.json`` records the count (``provenance.threads``). Every random source is
seeded: the synthetic data (generator seed 1234), the folds (``split_seed``), the
inner validation split, initialisation, batch order, flips and dropout (the run's seed).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brats_grading import __version__
from brats_grading.claims import MARGIN, claims_for
from brats_grading.config import PRESETS, benchmark_preset, synth_preset
from brats_grading.data import discover, load_cases, make_split
from brats_grading.evaluate import grading_metrics, predict_with_branches
from brats_grading.methods import METHODS
from brats_grading.model import GradingNet
from brats_grading.synth import write_synthetic
from brats_grading.train import StageCache, fit_method, method_config
from medcommon import metrics as M
from medcommon.cli.args import BENCHMARK_THREADS
from medcommon.errors import InputError
from medcommon.provenance import module_source
from medcommon.report import (
    make_results,
    markdown_table,
    plot_bars,
    plot_differences,
    plot_image_grid,
    write_report,
    write_results,
)
from medcommon.report.claims import CONFIDENCE
from medcommon.report.plots import plot_runs
from medcommon.train import fix_threads

METRICS = ["auc", "accuracy", "sensitivity", "specificity", "f1", "brier"]


def attention_figure(model: GradingNet, x: np.ndarray, path: Path, branch: str) -> Path:
    """Input slices, spatial attention received per position, and the slice attention matrix."""
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x[None].astype(np.float32)))
    attn = out["attention"][branch]
    if not attn:
        raise InputError("model", "has no attention maps (built with attention=False)")
    spatial = attn["spatial"][0]  # (D, N, N): row i = where position i reads from
    d, n, _ = spatial.shape
    received = spatial.mean(dim=1)  # (D, N): mean attention each position receives
    feat_hw = _factor_hw(n, x.shape[-2], x.shape[-1])
    slices = np.linspace(0, x.shape[1] - 1, num=min(6, x.shape[1])).round().astype(int)
    mod_index = {"t1": 0, "t1ce": 1, "t2": 2, "flair": 3}.get(branch, 1)
    row_in = [x[mod_index, s].astype(np.float32) for s in slices]
    row_sp = []
    for s in slices:
        m = received[min(s, d - 1)].reshape(feat_hw).numpy()
        row_sp.append(np.kron(m, np.ones((x.shape[-2] // feat_hw[0], x.shape[-1] // feat_hw[1]))))
    row_sl = [attn["slice"][0].numpy()]
    return plot_image_grid(
        [row_in, row_sp, row_sl],
        path,
        row_labels=[f"{branch} input", "spatial attn", "slice attn (DxD)"],
        col_labels=[f"slice {s}" for s in slices],
        title=f"dual attention of the {branch} branch (one test case)",
    )


def branch_diagnostics(branch_probs: dict[str, np.ndarray], y: list[int]) -> dict:
    """Per-branch test AUC and spread (std) of P(HGG): how much each branch adds or adds noise.

    ``branch_probs``: P(HGG) per branch on the test cases (from
    :func:`brats_grading.evaluate.predict_with_branches`); empty for one-branch models.
    """
    if len(branch_probs) < 2:
        return {}
    return {n: {"auc": M.auc(y, p), "p_std": float(p.std())} for n, p in branch_probs.items()}


def _factor_hw(n: int, h: int, w: int) -> tuple[int, int]:
    ratio = h / w
    best = (n, 1)
    for a in range(1, n + 1):
        if n % a == 0 and abs(a / (n // a) - ratio) < abs(best[0] / best[1] - ratio):
            best = (a, n // a)
    return best


def benchmark_methods(preset: str, methods: Sequence[str] | None = None) -> list[str]:
    """The methods a run compares: ``methods`` if given, else the preset's (default: all)."""
    if methods:
        return list(methods)
    return list(benchmark_preset(preset).methods or METHODS.names())


def benchmark_folds(preset: str, k: int, folds: int | None = None) -> list[int]:
    """The folds a run evaluates: the preset's (default: all ``k``), all ``k`` with ``--folds``."""
    chosen = benchmark_preset(preset).folds
    if folds is None and chosen:
        return [f for f in chosen if f < k]
    return list(range(k))


def run_benchmark(
    out: Path,
    preset: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    *,
    data: Path | None = None,
    device: str = "auto",
    quiet: bool = False,
    folds: int | None = None,
    methods: Sequence[str] | None = None,
    threads: int = BENCHMARK_THREADS,
) -> dict[str, Any]:
    """Run the comparison and write ``out/results.json``, ``out/report.md`` and plots.

    ``folds`` sets the number of folds K (default: the preset's); every fold runs,
    except that a preset naming its ``benchmark.folds`` (``demo``) runs those without
    ``folds``. ``methods`` defaults to the preset's ``benchmark.methods`` (default: all).
    ``threads``: CPU threads of this process, pinned before anything runs (module
    docstring), so that the numbers do not depend on the environment or the machine.
    """
    fix_threads(threads)
    methods = benchmark_methods(preset, methods)
    for m in methods:
        METHODS.get(m)
    out = Path(out)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            data = write_synthetic(
                Path(tmp) / "data", synth_preset(preset), "2019", seed=1234, quiet=quiet
            )
            source = f"synthetic `{preset}` set (layout 2019, generator seed 1234)"
        else:
            source = f"`{data}`"
        _, cases = discover(data)
        _, base_cfg = method_config("cmg", preset)
        k = folds or base_cfg.folds
        arrays = load_cases(cases, base_cfg.shape, quiet=quiet)
    labels = [c.label for c in cases]
    patients = [c.patient for c in cases]
    index = {c.name: i for i, c in enumerate(cases)}
    fold_ids = benchmark_folds(preset, k, folds)
    splits = {f: make_split(cases, k, f, base_cfg.split_seed) for f in fold_ids}
    rows: list[dict[str, Any]] = []
    throughput: dict[str, list[float]] = {}
    fig_model = None
    fig_case = None
    # Stage 1 of cmg and cmg-no-guidance is single-t1ce's training: train it once per
    # (seed, fold). Cleared per fold: a fold's stages never serve another.
    cache = StageCache()
    for seed in seeds:
        for f, split in splits.items():
            cache.clear()
            tr = [index[n] for n in split["train"]]
            te = [index[n] for n in split["test"]]
            y_te = [labels[i] for i in te]
            for name in methods:
                method, cfg = method_config(name, preset, overrides=[f"folds={k}", f"fold={f}"])
                info = fit_method(
                    method, cfg, arrays, labels, tr, patients=patients, seed=seed,
                    device=device, quiet=quiet, cache=cache,
                )  # fmt: skip
                probs, branch_probs = predict_with_branches(info.model, arrays[te])
                branches = branch_diagnostics(branch_probs, y_te)
                rows.append({
                    "method": name, "seed": seed, "fold": f,
                    "metrics": grading_metrics(y_te, probs),
                    "train_seconds": info.train_seconds,
                    "volumes_per_second": info.volumes_per_second,
                    "branches": branches,
                    "fusion": info.fusion,
                })  # fmt: skip
                throughput.setdefault(name, []).append(info.volumes_per_second)
                if name == "cmg" and fig_model is None:
                    fig_model, fig_case = info.model, arrays[te[0]].astype(np.float32)
                if not quiet:
                    m = rows[-1]["metrics"]
                    print(f"seed {seed} fold {f} {name:18s} auc={m['auc']:.3f} acc={m['accuracy']:.3f} "
                          f"({info.train_seconds:.1f}s)", flush=True)  # fmt: skip
    extra: dict[str, Any] = {
        "folds": k,
        "folds_run": fold_ids,
        "stages_reused": cache.hits,
        "data": source,
        "n_cases": len(cases),
        "n_hgg": int(sum(labels)),
        "n_lgg": int(len(labels) - sum(labels)),
        "shape": list(base_cfg.shape),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    for name, vals in throughput.items():
        extra[f"volumes_per_second_{name}"] = float(np.mean(vals))
    if "cmg" in throughput and "early-fusion" in throughput:
        extra["throughput_ratio_cmg_over_early_fusion"] = float(
            np.mean(throughput["cmg"]) / np.mean(throughput["early-fusion"])
        )
    runs = _runs_text(fold_ids, k, len(seeds))
    figures = ["headline.png", "auc.png"]
    results = make_results(
        "brats-grading", __version__, preset, list(seeds), rows, extra,
        claims=claims_for(methods), figures=figures,
        sources=[module_source("brats_grading.claims"), *PRESETS.sources(preset)],
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    summary = {s["method"]: s["metrics"] for s in results["summary"]}
    plot_runs(
        {m: [r["metrics"]["auc"] for r in rows if r["method"] == m] for m in summary},
        out / "headline.png",
        f"test AUC per run ({runs}); diamond: mean ± std",
        "test AUC (right: better)",
        highlight=[m for m in summary if m == "cmg"],
    )
    plot_bars(
        {m: {"auc": (summary[m]["auc"]["mean"], summary[m]["auc"]["std"])} for m in summary},
        out / "auc.png",
        f"test AUC, {runs}",
        "AUC",
    )
    mean_auc = {m: v["auc"]["mean"] for m, v in summary.items()}
    diffs = paired_auc_differences(rows, "cmg", _comparisons(mean_auc))
    if diffs:
        results["figures"].append("paired.png")
        plot_differences(
            {f"cmg − {m}": d for m, d in diffs.items()},
            out / "paired.png",
            f"CMG minus each method, paired by (seed, fold): {runs}",
            "test AUC difference (right of 0: CMG higher)",
        )
    if fig_model is not None and fig_model.config.attention:
        attention_figure(fig_model, fig_case, out / "attention.png", fig_model.config.primary)
        results["figures"].append("attention.png")
    write_results(out, results)
    write_report(
        out,
        results,
        "brats-grading benchmark",
        sections=_sections(results, k, seeds),
        metrics=METRICS,
        spread_over=runs,
    )
    return results


def _runs_text(fold_ids: Sequence[int], k: int, n_seeds: int) -> str:
    """``"3 folds x 3 seeds"`` when all K folds run, else e.g. ``"3 seeds, fold 0 of 3"``."""
    if len(fold_ids) == k:
        return f"{k} folds x {n_seeds} seeds"
    folds = f"fold{'s' if len(fold_ids) > 1 else ''} {', '.join(map(str, fold_ids))} of {k}"
    return f"{n_seeds} seeds, {folds}"


_BRANCHES = ("t1", "t1ce", "t2", "flair")


def _per_branch_table(acc: dict[str, dict[str, list[tuple[float, float]]]], fmt: str) -> str:
    """A method x branch table; each cell formats the (nan-)means of its value pairs with ``fmt``."""
    if not acc:
        return ""
    lines = ["| method | " + " | ".join(_BRANCHES) + " |", "|---|" + "---|" * len(_BRANCHES)]
    for method, per in acc.items():
        cells = []
        for b in _BRANCHES:
            vals = np.array(per.get(b, []), dtype=float)
            cells.append("–" if vals.size == 0 else fmt.format(*np.nanmean(vals, axis=0)))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _branch_table(rows: list[dict[str, Any]]) -> str:
    """Mean test AUC and spread of predictions (p_std) of each branch per method."""
    acc: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in rows:
        for b, v in (r.get("branches") or {}).items():
            acc.setdefault(r["method"], {}).setdefault(b, []).append((v["auc"], v["p_std"]))
    return _per_branch_table(acc, "{:.3f} / {:.2f}")


def _fusion_table(rows: list[dict[str, Any]]) -> str:
    """Mean validation-fitted fusion weight (and validation AUC) of each branch per method."""
    acc: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in rows:
        fusion = r.get("fusion") or {}
        for b, a in (fusion.get("val_auc") or {}).items():
            w = (fusion.get("weights") or {}).get(b, float("nan"))
            acc.setdefault(r["method"], {}).setdefault(b, []).append((w, a))
    return _per_branch_table(acc, "{:.2f} / {:.3f}")


def paired_auc_differences(
    rows: list[dict[str, Any]], method: str, others: Sequence[str]
) -> dict[str, np.ndarray]:
    """``AUC(method) - AUC(other)`` per (seed, fold) run both have, for each other method.

    All methods of one (seed, fold) see the same split and the same seed, so the paired
    difference removes the fold-to-fold spread that dominates the per-method std.
    """
    auc = {(r["method"], r["seed"], r["fold"]): r["metrics"]["auc"] for r in rows}
    runs = sorted({(s, f) for m, s, f in auc if m == method})
    out = {}
    for other in others:
        d = [auc[method, s, f] - auc[other, s, f] for s, f in runs if (other, s, f) in auc]
        if d:
            out[other] = np.array(d)
    return out


def paired_differences(rows: list[dict[str, Any]], method: str, others: Sequence[str]) -> str:
    """Markdown table of :func:`paired_auc_differences`: mean ± std and how often positive."""
    lines = []
    for other, d in paired_auc_differences(rows, method, others).items():
        std = d.std(ddof=1) if d.size > 1 else float("nan")
        lines.append(f"| {other} | {d.mean():+.3f} ± {std:.3f} | {int((d > 0).sum())} / {d.size} |")
    if not lines:
        return ""
    head = f"| paired by (seed, fold): {method} minus | AUC difference | runs where {method} is higher |"
    return head + "\n|---|---|---|\n" + "\n".join(lines) + "\n"


def _best_single(aucs: dict[str, float]) -> str | None:
    """The ``single-<m>`` method with the highest mean AUC (None if none ran)."""
    singles = [m for m in aucs if m.startswith("single-")]
    return max(singles, key=aucs.get) if singles else None


def _comparisons(aucs: dict[str, float]) -> list[str]:
    """What CMG is compared with: early fusion, the best single modality, late fusion, ablations."""
    best = _best_single(aucs)
    wanted = ["early-fusion", best, "late-fusion", "cmg-no-attention", "cmg-no-guidance"]
    return [m for m in wanted if m in aucs]


def _per_seed_table(rows: list[dict[str, Any]], seeds: Sequence[int]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]  # fmt: skip
    for m in methods:
        cells = [np.mean([r["metrics"]["auc"] for r in rows if r["method"] == m and r["seed"] == s])
                 for s in seeds]  # fmt: skip
        lines.append(f"| {m} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _sections(results: dict[str, Any], k: int, seeds: Sequence[int]) -> list[tuple[str, str]]:
    extra = results["extra"]
    folds_run = extra.get("folds_run") or list(range(k))
    summary = {s["method"]: s for s in results["summary"]}
    lines = [
        f"Data: {extra['data']}: {extra['n_cases']} cases ({extra['n_hgg']} HGG / "
        f"{extra['n_lgg']} LGG), resized to {tuple(extra['shape'])}. Stratified {k}-fold by "
        f"patient; each row above is the mean ± sample std over "
        f"{_runs_text(folds_run, k, len(seeds))} ({len(folds_run) * len(seeds)} runs). "
        f"Threshold 0.5 on P(HGG).",
        "",
        f"Claims: each is decided on the paired differences CMG − baseline in test AUC, one "
        f"per (seed, fold), with a {CONFIDENCE:.0%} t-interval: it holds when the whole "
        f"interval lies above +{MARGIN} (the margin fixed in `brats_grading/claims.py` before "
        f"the run), fails when it lies below, and is undecided when it straddles the margin "
        f"or fewer than 2 pairs exist. First-stage trainings reused across methods "
        f"(identical by construction, see `StageCache`): {extra.get('stages_reused', 0)}.",
    ]
    sections = [("Setup", "\n".join(lines))]
    tp = [
        f"| {m} | {extra[f'volumes_per_second_{m}']:.1f} | {summary[m].get('train_seconds', float('nan')):.1f} |"
        for m in summary
        if f"volumes_per_second_{m}" in extra
    ]
    body = "| method | training volumes/s | train seconds per run |\n|---|---|---|\n" + "\n".join(
        tp
    )
    if "throughput_ratio_cmg_over_early_fusion" in extra:
        body += (
            f"\n\nCMG / early-fusion throughput ratio (same run): "
            f"{extra['throughput_ratio_cmg_over_early_fusion']:.2f}"
        )
    sections.append(("Throughput", body))
    aucs = {m: s["metrics"]["auc"]["mean"] for m, s in summary.items()}
    if "cmg" in aucs:
        verdict = [f"CMG AUC {aucs['cmg']:.3f}"]
        if "early-fusion" in aucs:
            verdict.append(f"early fusion {aucs['early-fusion']:.3f}")
        best = _best_single(aucs)
        if best:
            verdict.append(f"best single modality {best} {aucs[best]:.3f}")
        body = ", ".join(verdict) + "."
        paired = paired_differences(results["rows"], "cmg", _comparisons(aucs))
        if paired:
            body += "\n\n" + paired
        sections.append(("CMG against each method, paired by (seed, fold)", body))
        sections.append(("AUC per seed (mean over folds)", _per_seed_table(results["rows"], seeds)))
    diag = _branch_table(results["rows"])
    if diag:
        sections.append(("Branches of the multi-branch methods (test AUC / std of P(HGG))", diag))
    fusion = _fusion_table(results["rows"])
    if fusion:
        sections.append(
            ("Reliability fusion: mean weight / mean inner-validation AUC per branch", fusion)
        )
    sections.append(("AUC per method", markdown_table(results, ["auc"])))
    return sections
