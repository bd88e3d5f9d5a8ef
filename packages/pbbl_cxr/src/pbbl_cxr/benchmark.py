"""The paper's comparison: every method on synthetic GbP and SbP at several bias ratios,
plus a setting where the bias is no shortcut.

For each :class:`Setting` and seed a synthetic dataset is generated with that seed
(in memory, bit-identical to ``pbbl-cxr synth`` followed by loading the PNGs), every
method is trained on it with the preset's config and scored on the group-balanced
test split. ``results.json`` rows carry ``setting`` = ``gbp-0.95`` etc.; its
``claims`` are :func:`pbbl_cxr.claims.declared_claims`, each decided on the paired
per-seed differences method − baseline in its setting with a 95 % t-interval
(:mod:`medcommon.report.claims`): holds when the whole interval clears the margin,
fails when it lies on the other side, undecided when it straddles the margin.

Same code, same seeds, same numbers: every random draw comes from the seed (the data
from ``np.random.default_rng(seed)``, model init from ``seed_everything(seed)``, the
batch order from ``(seed, step)``, augmentation from ``(seed, step, sample)``, the
cross-fitting folds from ``seed``; the models have no dropout and evaluation draws
nothing), and :func:`run_benchmark` pins the CPU threads of its process and of every
worker to ``threads`` (:func:`medcommon.train.fix_threads`, deterministic kernels on),
whatever ``OMP_NUM_THREADS`` says and however many workers run. So the metrics depend
on the seeds and ``threads`` (recorded as ``provenance.threads``), not on the machine,
the environment or ``workers`` (``tests/test_benchmark.py::test_numbers_do_not_depend_on_the_environment_or_workers``).

PBBL is reported twice: ``pbbl`` selects its checkpoint without bias labels,
``pbbl-oracle-select`` on the true-bias balanced valid AUC (an oracle).

Time ratios are measured in the same run: PBBL stage-2 seconds per step over ERM
seconds per step (evaluation time excluded), and the whole PBBL pipeline (stage-1
rounds, pseudo-labelling, stage 2) over the whole ERM run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medcommon.cli.args import BENCHMARK_THREADS
from medcommon.errors import InputError
from medcommon.provenance import module_source
from medcommon.report import make_results, plot_bars, plot_differences, write_report, write_results
from medcommon.synthetic import to_uint
from medcommon.train import fix_threads, pinned_map
from pbbl_cxr import __version__
from pbbl_cxr.claims import PBBL, PBBL_ORACLE_SELECT, declared_claims
from pbbl_cxr.config import (
    PRESETS,
    BenchmarkConfig,
    RunConfig,
    SynthConfig,
    benchmark_preset,
    run_preset,
    synth_preset,
)
from pbbl_cxr.data import DataOptions, XrayDataset, load_split, to_unit_gray
from pbbl_cxr.evaluate import evaluate_model
from pbbl_cxr.methods import METHODS, RunContext, run_method
from pbbl_cxr.synth import group_counts, render

REPORT_METRICS = (
    "auc",
    "auc_aligned",
    "auc_conflicting",
    "auc_balanced",
    "ap",
    "acc_worst_group",
    "pseudo_bias_accuracy",
)
BIAS_LABEL_SELECT = frozenset(
    {"auc_balanced", "auc_aligned", "auc_conflicting", "acc_worst_group", "acc_mean_group"}
)
"""``select_metric`` values that need true bias labels on the valid split."""
HEADLINE_METHODS = ("erm", PBBL, "bbs-oracle")
FIGURES = ("headline.png", "pbbl_minus_erm.png", "auc_conflicting.png", "auc_balanced.png")


@dataclass(frozen=True)
class Setting:
    """One synthetic dataset recipe: layout, bias ratio, and changes to the preset's
    :class:`SynthConfig` (``synth``). ``shortcut``: the bias is the easier cue."""

    name: str
    kind: str
    bias_ratio: float
    shortcut: bool = True
    synth: tuple[tuple[str, float], ...] = ()

    def synth_config(self, preset: str) -> SynthConfig:
        return synth_preset(preset, kind=self.kind, bias_ratio=self.bias_ratio, **dict(self.synth))


def shortcut_setting(kind: str, ratio: float) -> Setting:
    """GbP/SbP at ``ratio``: the preset's faint lesion, the bias the easier cue."""
    return Setting(f"{kind}-{ratio:g}", kind, ratio)


NO_SHORTCUT = Setting(
    "no-shortcut",
    "gbp",
    0.9,
    shortcut=False,
    # A lesion as easy to learn as the body-habitus cue (issue #10): about twice the
    # contrast and 2.7 times the width of the default faint lesion (0.30, 1.5 px).
    synth=(("lesion_contrast", 0.6), ("lesion_sigma", 4.0)),
)
"""GbP layout, 90 % aligned, where the lesion is no harder than the bias."""

VARIANTS = {PBBL_ORACLE_SELECT: "pbbl"}
"""Benchmark rows that run a registered method under another config (see :func:`row_config`)."""


def method_names() -> list[str]:
    """Every row name the benchmark can run: the registry, then the PBBL oracle-selection row."""
    return [*METHODS.names(), *VARIANTS]


def preset_methods(preset: str) -> list[str]:
    """The rows a preset runs by default: its ``benchmark.methods``, else every row."""
    return list(benchmark_preset(preset).methods) or method_names()


def row_config(name: str, cfg: RunConfig) -> RunConfig:
    """The config row ``name`` trains with.

    ``pbbl`` selects without bias labels: the config's ``select_metric`` if it needs
    none, else the overall valid AUC. ``pbbl-oracle-select`` selects on the true-bias
    balanced valid AUC. Every other method uses ``cfg`` as given.
    """
    if name == PBBL and cfg.select_metric in BIAS_LABEL_SELECT:
        return replace(cfg, select_metric="auc")
    if name == PBBL_ORACLE_SELECT:
        return replace(cfg, select_metric="auc_balanced")
    return cfg


def _sized(opts: DataOptions, cfg: RunConfig) -> DataOptions:
    """``opts`` at the model's image size and number of classes."""
    return replace(opts, image_size=cfg.model.image_size, num_classes=cfg.model.num_classes)


def synth_datasets(cfg: SynthConfig, seed: int, image_size: int) -> dict[str, XrayDataset]:
    """``train``/``valid``/``test`` of :func:`pbbl_cxr.synth.generate` (same seed), in memory.

    The same random draws in the same order as ``generate``; the 8-bit pixels it would
    write to PNG are scaled to [0, 1] and resized as :func:`pbbl_cxr.data.load_split`
    reads them, and the samples come in the order ``load_split`` lists them (SbP's
    train split is ``train_MIMIC.csv`` then ``train_NIH.csv``). So the tensors equal
    those of writing the dataset and loading it, without the PNG round trip.
    """
    cfg = cfg.check()
    rng = np.random.default_rng(seed)
    plan = {
        "train": group_counts(cfg.n_train, cfg.bias_ratio),
        "valid": group_counts(cfg.n_valid, None),
        "test": group_counts(cfg.n_test, None),
    }
    out = {}
    for split, counts in plan.items():
        items = [(y, b) for (y, b), k in counts.items() for _ in range(k)]
        samples = []
        for j in rng.permutation(len(items)):
            y, b = items[j]
            samples.append((to_uint(render(rng, cfg, y, b), bits=8), y, b))
        if cfg.kind == "sbp" and split == "train":  # train_MIMIC.csv sorts before train_NIH.csv
            samples = [s for s in samples if s[2] == 1] + [s for s in samples if s[2] == 0]
        images = torch.from_numpy(np.stack([to_unit_gray(s[0]) for s in samples]))[:, None]
        if images.shape[-1] != image_size:
            images = torch.nn.functional.interpolate(
                images,
                size=(image_size, image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        out[split] = XrayDataset(
            images.to(torch.float16),
            torch.tensor([s[1] for s in samples]),
            torch.tensor([s[2] for s in samples]),
        )
    return out


def _run_methods(
    data: dict[str, XrayDataset],
    setting: str,
    cfg: RunConfig,
    methods: Sequence[str],
    seed: int,
    device: str,
    quiet: bool,
) -> list[dict[str, Any]]:
    """Every row ``methods`` on one dataset; each model scored once on ``test``."""
    rows = []
    for name in methods:
        ctx = RunContext(
            row_config(name, cfg), data["train"], data["valid"], None, seed, device, quiet
        )
        out = run_method(VARIANTS.get(name, name), ctx)
        metrics = evaluate_model(out.model, data["test"], device=device)
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


def _synthetic_job(job: tuple) -> list[dict[str, Any]]:
    """One (setting, seed): generate the data in memory, run every method (a worker's task)."""
    setting, preset, cfg, methods, seed, device, quiet = job
    data = synth_datasets(setting.synth_config(preset), seed, cfg.model.image_size)
    return _run_methods(data, setting.name, cfg, methods, seed, device, quiet)


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
        if r["method"] != PBBL:
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


def claim_section(
    rows: list[dict[str, Any]], settings: Sequence[str], shortcut: Sequence[str] | None = None
) -> tuple[str, dict]:
    """Markdown: PBBL - ERM conflicting AUC per setting, and where PBBL lands vs the oracle.

    The last line averages over the ``shortcut`` settings (default: all of ``settings``).
    """
    lines = [
        "| setting | ERM | PBBL | bbs-oracle | PBBL - ERM | (PBBL - ERM) / (oracle - ERM) |",
        "|---|---|---|---|---|---|",
    ]
    shortcut = list(settings if shortcut is None else shortcut)
    gaps = {}
    for s in [*settings, None]:
        if s is None:
            keep = [r for r in rows if r["setting"] in shortcut]
            e, p, o = (_mean(keep, m, "auc_conflicting") for m in ("erm", PBBL, "bbs-oracle"))
        else:
            e, p, o = (_mean(rows, m, "auc_conflicting", s) for m in ("erm", PBBL, "bbs-oracle"))
        gap = p - e
        # No share of a gap is reported where ERM is already at the oracle (no shortcut).
        frac = gap / (o - e) if np.isfinite(o) and abs(o - e) > 0.01 else float("nan")
        gaps[s or "shortcut mean"] = gap
        name = s or "**mean of the shortcut settings**"
        lines.append(f"| {name} | {e:.3f} | {p:.3f} | {o:.3f} | {gap:+.3f} | {frac:.2f} |")
    text = (
        "Conflicting-group test AUC, mean over seeds (the paper's claim: PBBL well above ERM; "
        "the bias-balanced oracle uses true bias labels).\n\n" + "\n".join(lines) + "\n"
    )
    return text, gaps


def preset_settings(preset: str) -> list[Setting]:
    """The settings of a preset's ``benchmark`` section: its grid, then the no-shortcut one."""
    grid = benchmark_preset(preset)
    chosen = [shortcut_setting(k, r) for k in grid.kinds for r in grid.ratios]
    return [*chosen, NO_SHORTCUT] if grid.no_shortcut else chosen


def resolve_settings(
    preset: str, kinds: Sequence[str] | None = None, ratios: Sequence[float] | None = None
) -> list[Setting]:
    """The preset's settings, or the grid ``kinds`` x ``ratios`` when either is given (the
    other then defaults to :class:`~pbbl_cxr.config.BenchmarkConfig`'s whole range)."""
    if kinds is None and ratios is None:
        return preset_settings(preset)
    every = BenchmarkConfig()
    return [
        shortcut_setting(k, r) for k in (kinds or every.kinds) for r in (ratios or every.ratios)
    ]


def run_benchmark(
    out: str | Path,
    preset: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    data: str | Path | None = None,
    methods: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    ratios: Sequence[float] | None = None,
    device: str = "cpu",
    quiet: bool = True,
    cfg: RunConfig | None = None,
    opts: DataOptions | None = None,
    settings: Sequence[Setting] | None = None,
    workers: int = 1,
    threads: int = BENCHMARK_THREADS,
) -> dict[str, Any]:
    """Run the comparison and write ``results.json``, ``report.md`` and plots to ``out``.

    Settings: ``settings`` if given, else the grid ``kinds`` x ``ratios`` if either is
    given, else the preset's (:func:`preset_settings`). ``methods``: row names
    (:func:`method_names`; default :func:`preset_methods`). ``workers`` > 1 runs the
    synthetic (setting, seed) jobs in that many processes; each job is seeded on its
    own, so the rows do not depend on it. ``threads``: CPU threads of this process and
    of each worker, pinned first (:func:`medcommon.train.fix_threads`) whatever the
    environment says; the same count per process for any ``workers``.
    """
    fix_threads(threads)
    out = Path(out)
    cfg = cfg or run_preset(preset)
    methods = list(methods or preset_methods(preset))
    for m in methods:
        if m not in VARIANTS:
            METHODS.get(m)
    if workers < 1:
        raise InputError("--workers", f"must be at least 1, got {workers}")
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if data is not None:
        # Decoded once (this also reports every bad row before any run), reused by every seed.
        load_opts = _sized(opts or DataOptions(), cfg)
        splits = {
            s: load_split(data, s, load_opts, quiet=quiet) for s in ("train", "valid", "test")
        }
        chosen = [Setting(Path(data).name, "data", float("nan"))]
        for seed in tqdm(seeds, desc="seeds", disable=quiet):
            rows += _run_methods(splits, chosen[0].name, cfg, methods, seed, device, quiet)
    else:
        chosen = list(settings) if settings is not None else resolve_settings(preset, kinds, ratios)
        jobs = [(s, preset, cfg, methods, seed, device, quiet) for s in chosen for seed in seeds]
        done = pinned_map(_synthetic_job, jobs, workers=workers, threads=threads,
                          desc="benchmark", quiet=quiet)  # fmt: skip
        rows += [row for job_rows in done for row in job_rows]
    extra: dict[str, Any] = dict(time_ratios(rows))
    extra["benchmark_seconds"] = time.perf_counter() - t_start
    shortcut = [s.name for s in chosen if s.shortcut]
    no_shortcut = [s.name for s in chosen if not s.shortcut]
    claims = declared_claims(shortcut, no_shortcut, methods)
    results = make_results(
        "pbbl-cxr",
        __version__,
        preset,
        seeds,
        rows,
        extra,
        claims=claims,
        figures=FIGURES,
        sources=[module_source("pbbl_cxr.claims"), *PRESETS.sources(preset)],
    )
    results["settings"] = [{**asdict(s), "synth": dict(s.synth)} for s in chosen]
    write_outputs(out, results)
    return results


def write_outputs(out: str | Path, results: dict[str, Any]) -> None:
    """``results.json``, ``report.md`` and the plots, all from ``results`` (rows + extra)."""
    out = Path(out)
    rows = results["rows"]
    settings = list(dict.fromkeys(r.get("setting", "") for r in rows))
    described = {s["name"]: s for s in results.get("settings", [])}
    shortcut = [s for s in settings if described.get(s, {}).get("shortcut", True)]
    methods = {r["method"] for r in rows}
    extra = results.setdefault("extra", {})
    sections = []
    if {"erm", PBBL} <= methods:
        claim, gaps = claim_section(rows, settings, shortcut)
        extra.update({f"pbbl_minus_erm_auc_conflicting[{k}]": v for k, v in gaps.items()})
        sections.append(("PBBL vs ERM on bias-conflicting samples", claim))
    if described:
        sections.append(("Settings", _settings_md(results["settings"])))
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
    figures = results.get("figures") or []
    sections.append(
        ("Plots", "\n\n".join(f"![{f}]({f})" for f in [*figures[1:], "pseudo_label_accuracy.png"]))
    )
    write_results(out, results)
    write_report(out, results, "pbbl-cxr benchmark", sections, metrics=list(REPORT_METRICS))


def _settings_md(settings: Sequence[dict[str, Any]]) -> str:
    lines = ["| setting | layout | train bias-aligned | bias is a shortcut | data changes |"]
    lines.append("|---|---|---|---|---|")
    for s in settings:
        changes = ", ".join(f"{k}={v:g}" for k, v in s["synth"].items()) or "preset"
        r = s.get("bias_ratio")
        ratio = f"{r:g}" if r is not None and np.isfinite(r) else ""
        lines.append(
            f"| {s['name']} | {s['kind']} | {ratio} | {'yes' if s['shortcut'] else 'no'} | {changes} |"
        )
    return "\n".join(lines) + "\n"


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
            pacc.setdefault(s.get("setting", ""), {})[s["method"]] = (p["mean"], p["std"])
    head = {g: {m: v[m] for m in HEADLINE_METHODS if m in v} for g, v in conf.items() if v} or {
        s: {} for s in settings
    }
    plot_bars(
        head,
        out / "headline.png",
        "Bias-conflicting test AUC: ERM, PBBL (no bias labels), oracle (true bias labels)",
        "AUC (mean ± std over seeds)",
    )
    rows = results["rows"]
    diffs: dict[str, list[float]] = {}
    for s in settings:
        for r in rows:
            if r["method"] != PBBL or r["setting"] != s:
                continue
            erm = [
                e
                for e in rows
                if e["method"] == "erm" and e["setting"] == s and e["seed"] == r["seed"]
            ]
            if not erm:
                continue
            pair = (r["metrics"].get("auc_conflicting"), erm[0]["metrics"].get("auc_conflicting"))
            if None not in pair:
                diffs.setdefault(s, []).append(pair[0] - pair[1])
    plot_differences(
        diffs or {s: [] for s in settings},
        out / "pbbl_minus_erm.png",
        "PBBL − ERM, bias-conflicting test AUC (dots: seeds)",
        "AUC difference",
    )
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
