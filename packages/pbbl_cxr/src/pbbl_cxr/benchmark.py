"""The paper's comparison: every method on synthetic GbP and SbP at several bias ratios.

For each setting (kind x bias ratio) and seed, a synthetic dataset is generated with
that seed, every method is trained on it with the preset's config and scored on the
group-balanced test split. ``results.json`` rows carry ``setting`` = ``gbp-0.95`` etc.
Time ratios are measured in the same run: PBBL stage-2 seconds per step over ERM
seconds per step (evaluation time excluded), and the whole PBBL pipeline (stage-1
rounds, pseudo-labelling, stage 2) over the whole ERM run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medcommon.report import make_results, plot_bars, write_report, write_results
from pbbl_cxr import __version__
from pbbl_cxr.config import RunConfig, run_preset, synth_preset
from pbbl_cxr.data import DataOptions, load_split
from pbbl_cxr.evaluate import evaluate_model
from pbbl_cxr.methods import METHODS, RunContext, run_method
from pbbl_cxr.synth import generate

KINDS = ("gbp", "sbp")
RATIOS = (0.9, 0.95, 0.99)
REPORT_METRICS = (
    "auc",
    "auc_aligned",
    "auc_conflicting",
    "auc_balanced",
    "ap",
    "acc_worst_group",
    "pseudo_bias_accuracy",
)


def _sized(opts: DataOptions, cfg: RunConfig) -> DataOptions:
    """``opts`` at the model's image size and number of classes."""
    return replace(opts, image_size=cfg.model.image_size, num_classes=cfg.model.num_classes)


def _run_setting(
    data_dir: Path,
    setting: str,
    cfg: RunConfig,
    methods: Sequence[str],
    seed: int,
    device: str,
    quiet: bool,
    opts: DataOptions | None = None,
) -> list[dict[str, Any]]:
    opts = _sized(opts or DataOptions(), cfg)
    train, valid, test = (load_split(data_dir, s, opts) for s in ("train", "valid", "test"))
    rows = []
    for name in methods:
        ctx = RunContext(cfg, train, valid, None, seed, device, quiet)
        out = run_method(name, ctx)
        metrics = evaluate_model(out.model, test, device=device)
        if "pseudo_bias_accuracy" in out.info:
            metrics["pseudo_bias_accuracy"] = out.info["pseudo_bias_accuracy"]
        rows.append(
            {
                "method": name,
                "seed": seed,
                "setting": setting,
                "metrics": metrics,
                "train_seconds": out.train_seconds,
                "seconds_per_step": out.info.get("seconds_per_step"),
            }
        )
    return rows


def _mean(rows: list[dict[str, Any]], method: str, key: str, setting: str | None = None) -> float:
    vals = [
        r["metrics"].get(key) if key in r["metrics"] else r.get(key)
        for r in rows
        if r["method"] == method and (setting is None or r["setting"] == setting)
    ]
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def time_ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per (setting, seed) ratios PBBL/ERM, averaged: stage-2 step time and whole pipeline."""
    step, whole = [], []
    for r in rows:
        if r["method"] != "pbbl":
            continue
        erm = [
            e
            for e in rows
            if e["method"] == "erm" and e["setting"] == r["setting"] and e["seed"] == r["seed"]
        ]
        if not erm:
            continue
        step.append(r["seconds_per_step"] / erm[0]["seconds_per_step"])
        whole.append(r["train_seconds"] / erm[0]["train_seconds"])
    if not step:
        return {}
    return {
        "stage2_step_over_erm_step": float(np.mean(step)),
        "pbbl_pipeline_over_erm": float(np.mean(whole)),
    }


def claim_section(rows: list[dict[str, Any]], settings: Sequence[str]) -> tuple[str, dict]:
    """Markdown: PBBL - ERM conflicting AUC per setting, and where PBBL lands vs the oracle."""
    lines = [
        "| setting | ERM | PBBL | bbs-oracle | PBBL - ERM | (PBBL - ERM) / (oracle - ERM) |",
        "|---|---|---|---|---|---|",
    ]
    gaps = {}
    for s in [*settings, None]:
        e, p, o = (_mean(rows, m, "auc_conflicting", s) for m in ("erm", "pbbl", "bbs-oracle"))
        gap = p - e
        frac = gap / (o - e) if np.isfinite(o) and abs(o - e) > 1e-9 else float("nan")
        gaps[s or "all"] = gap
        lines.append(
            f"| {s or '**mean of all**'} | {e:.3f} | {p:.3f} | {o:.3f} | {gap:+.3f} | {frac:.2f} |"
        )
    text = (
        "Conflicting-group test AUC, mean over seeds (the paper's claim: PBBL well above ERM; "
        "the bias-balanced oracle uses true bias labels).\n\n" + "\n".join(lines) + "\n"
    )
    return text, gaps


def run_benchmark(
    out: str | Path,
    preset: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    data: str | Path | None = None,
    methods: Sequence[str] | None = None,
    kinds: Sequence[str] = KINDS,
    ratios: Sequence[float] = RATIOS,
    device: str = "cpu",
    quiet: bool = True,
    cfg: RunConfig | None = None,
    opts: DataOptions | None = None,
) -> dict[str, Any]:
    """Run the comparison and write ``results.json``, ``report.md`` and plots to ``out``."""
    out = Path(out)
    cfg = cfg or run_preset(preset)
    methods = list(methods or METHODS.names())
    for m in methods:
        METHODS.get(m)
    if data is not None:  # every bad row is reported before any run
        check_opts = _sized(opts or DataOptions(), cfg)
        for split in ("train", "valid", "test"):
            load_split(data, split, check_opts, quiet=quiet)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if data is not None:
        settings = [Path(data).name]
        for seed in tqdm(seeds, desc="seeds", disable=quiet):
            rows += _run_setting(Path(data), settings[0], cfg, methods, seed, device, quiet, opts)
    else:
        settings = [f"{k}-{r:g}" for k in kinds for r in ratios]
        jobs = [(k, r, s) for k in kinds for r in ratios for s in seeds]
        with tempfile.TemporaryDirectory(prefix="pbbl-bench-") as tmp:
            for kind, ratio, seed in tqdm(jobs, desc="benchmark", disable=quiet):
                d = Path(tmp) / f"{kind}-{ratio:g}-{seed}"
                generate(d, synth_preset(preset, kind=kind, bias_ratio=ratio), seed=seed)
                rows += _run_setting(d, f"{kind}-{ratio:g}", cfg, methods, seed, device, quiet)
    extra: dict[str, Any] = dict(time_ratios(rows))
    extra["benchmark_seconds"] = time.perf_counter() - t_start
    results = make_results("pbbl-cxr", __version__, preset, seeds, rows, extra)
    write_outputs(out, results)
    return results


def write_outputs(out: str | Path, results: dict[str, Any]) -> None:
    """``results.json``, ``report.md`` and the plots, all from ``results`` (rows + extra)."""
    out = Path(out)
    rows = results["rows"]
    settings = list(dict.fromkeys(r.get("setting", "") for r in rows))
    methods = {r["method"] for r in rows}
    extra = results.setdefault("extra", {})
    sections = []
    if {"erm", "pbbl"} <= methods:
        claim, gaps = claim_section(rows, settings)
        extra.update({f"pbbl_minus_erm_auc_conflicting[{k}]": v for k, v in gaps.items()})
        sections.append(("PBBL vs ERM on bias-conflicting samples", claim))
    out.mkdir(parents=True, exist_ok=True)
    _plots(out, results, settings)
    ratios_md = "\n".join(
        f"| {k} | {v:.3g} |" for k, v in extra.items() if not k.startswith("pbbl_minus")
    )
    sections.append(
        (
            "Time ratios (measured in this run)",
            "| quantity | value |\n|---|---|\n" + ratios_md + "\n\n"
            "`stage2_step_over_erm_step`: seconds per PBBL stage-2 step / per ERM step "
            "(evaluation excluded). `pbbl_pipeline_over_erm`: whole PBBL run (stage-1 rounds, "
            "pseudo-labelling, stage 2, validation) / whole ERM run.",
        )
    )
    sections.append(
        (
            "Plots",
            "![conflicting AUC](auc_conflicting.png)\n\n![balanced AUC](auc_balanced.png)\n\n"
            "![pseudo-label accuracy](pseudo_label_accuracy.png)",
        )
    )
    write_results(out, results)
    write_report(out, results, "pbbl-cxr benchmark", sections, metrics=list(REPORT_METRICS))


def _plots(out: Path, results: dict[str, Any], settings: Sequence[str]) -> None:
    conf: dict[str, dict[str, tuple[float, float]]] = {}
    bal: dict[str, dict[str, tuple[float, float]]] = {}
    pacc: dict[str, dict[str, tuple[float, float]]] = {}
    for s in results["summary"]:
        for name, target in (("auc_conflicting", conf), ("auc_balanced", bal)):
            m = s["metrics"].get(name)
            if m:
                target.setdefault(s.get("setting", ""), {})[s["method"]] = (m["mean"], m["std"])
        p = s["metrics"].get("pseudo_bias_accuracy")
        if p:
            pacc.setdefault(s.get("setting", ""), {})["pbbl"] = (p["mean"], p["std"])
    plot_bars(conf, out / "auc_conflicting.png", "Test AUC on bias-conflicting samples", "AUC")
    plot_bars(
        bal, out / "auc_balanced.png", "Balanced test AUC (mean of aligned, conflicting)", "AUC"
    )
    plot_bars(
        pacc or {s: {} for s in settings},
        out / "pseudo_label_accuracy.png",
        "Accuracy of PBBL's pseudo bias labels (train set)",
        "accuracy",
    )
