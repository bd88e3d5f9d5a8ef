"""``smg-learning benchmark``: every strategy over seeds on one multi-site dataset.

Writes ``DIR/results.json`` (medcommon schema; ``claims`` checks :mod:`smg_learning.claims`,
``extra`` holds the cost ratios), ``DIR/report.md``, the headline figure
(``DIR/headline.png``: the stage x site Dice matrices of ``finetune``, ``smg`` and
``joint`` side by side), a Dice-matrix heat map per row (``DIR/dice_<method>.png``), the
summary bars (``DIR/summary.png``) and a grid of SMD samples beside real slices per site
(``DIR/smd_samples.png``).

Rows are the registered strategies plus :data:`VARIANTS` (a strategy under a config
change, e.g. ``smg-alpha0``: PGA without its alignment step). Work shared between rows
of one seed: the synthetic data is generated and loaded once; every SMD-replay row
(``smd-replay``, ``smg``, ``smg-alpha0``) replays from one SMD per seed, trained by the
first of them and reused by the others (``smd_from``; its seconds are charged to each).
The SMD is not taught the last training site (no row replays it); the cost measurements
and ``smd_samples.png`` use this replay SMD, which knows the earlier training sites.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medcommon.config import replace_nested
from medcommon.errors import InputError
from medcommon.report import (
    make_results,
    plot_bars,
    plot_heatmap,
    plot_image_grid,
    plot_intervals,
    write_report,
    write_results,
)
from medcommon.report.plots import plot_heatmap_panels
from smg_learning import __version__
from smg_learning.claims import claims_for
from smg_learning.config import RunConfig, run_preset, with_smd_preset
from smg_learning.continual import train_continual
from smg_learning.costs import site_classifier_accuracy, time_pga, time_samplers
from smg_learning.data import load_continual
from smg_learning.replay import resize_pairs
from smg_learning.select import PGA_GRID, PGAChoice, apply_choice, select_pga
from smg_learning.strategies import STRATEGIES
from smg_learning.synth import generate

METRICS = ["memorizability", "generalizability", "bwt", "hd95", "train_seconds"]

#: training order and held-out sites of the synthetic benchmark, per preset
BENCH_SITES = {
    "tiny": (("RUNMC", "BMC"), ("I2CVB",)),
    "demo": (("RUNMC", "BMC", "I2CVB"), ("UCL",)),
    "small": (("RUNMC", "BMC", "I2CVB", "UCL"), ("BIDMC", "HK")),
    "full": (("RUNMC", "BMC", "I2CVB", "UCL"), ("BIDMC", "HK")),
}
#: cost-measurement sizes per preset (sampler comparison and site classifier)
COST_SIZES: dict[str, dict[str, int] | None] = {
    "tiny": dict(ddim_steps=5, per_site=2, train_steps=5, clf_steps=10, clf_per_site=4),
    "demo": None,  # the demo shows the claims only: no cost measurements
    "small": dict(ddim_steps=50, per_site=16, train_steps=300, clf_steps=300, clf_per_site=32),
    "full": dict(ddim_steps=50, per_site=32, train_steps=1000, clf_steps=1000, clf_per_site=64),
}

#: benchmark rows that are a registered strategy under a config change: name -> (strategy,
#: ``replace_nested`` overrides). ``smg-alpha0``: the PGA objective with the virtual step
#: ``pga.inner_lr`` (alpha) = 0, so every domain loss is taken at the current weights and
#: only the re-weighting (``beta_mem``, ``beta_gen``) is left: PGA's alignment ablated.
#: ``smg-sym``: the symmetric estimator (the full first-order alignment gradient);
#: ``smg-adam``: the virtual step in the outer Adam's geometry; both at the default α.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "smg-alpha0": ("smg", {"pga": {"inner_lr": 0.0}}),
    "smg-sym": ("smg", {"pga": {"estimator": "symmetric"}}),
    "smg-adam": ("smg", {"pga": {"virtual_step": "adam"}}),
}
#: rows whose ``pga`` settings are chosen by :func:`smg_learning.select.select_pga` on a
#: validation split of the training sites' training cases (grid
#: :data:`smg_learning.select.PGA_GRID`, α = 0 included), once per benchmark with the
#: first seed, before any row is trained: name -> strategy
SELECTED: dict[str, str] = {"smg-select": "smg"}
#: the α = 0 row that the PGA variants are paired with in the report
ALPHA0 = "smg-alpha0"
#: the rows of the ``demo`` preset: the central claim (smg vs finetune) and SMD replay
#: without PGA, which costs only segmenter steps (it trains the SMD that smg reuses)
DEMO_METHODS = ("finetune", "smd-replay", "smg")
#: the matrices of the headline figure, when present: the baseline, the method, the bound
HEADLINE = ("finetune", "smg", "joint")


def benchmark_methods() -> list[str]:
    """Every row name: the registered strategies, then :data:`VARIANTS`."""
    return [*STRATEGIES.names(), *VARIANTS, *SELECTED]


def check_methods(methods: list[str]) -> list[str]:
    """``methods`` if every name is a row name, else an :class:`InputError` on ``--methods``."""
    known = benchmark_methods()
    for m in methods:
        if m not in known:
            raise InputError("--methods", f"unknown method {m!r}; choose from {', '.join(known)}")
    return methods


def row_setup(
    method: str, cfg: RunConfig, selected: dict[str, Any] | None = None
) -> tuple[str, RunConfig]:
    """The strategy name and config of benchmark row ``method`` (``selected``: the
    selection's ``pga`` choice, for :data:`SELECTED` rows)."""
    if method in SELECTED:
        if selected is None:
            raise ValueError(f"row {method!r} needs the selection's choice")
        return SELECTED[method], apply_choice(cfg, selected)
    if method in VARIANTS:
        strategy, overrides = VARIANTS[method]
        return strategy, replace_nested(cfg, **overrides)
    return method, cfg


def run_benchmark(
    out: str | Path,
    *,
    preset: str = "small",
    seeds: list[int] = (0, 1, 2),
    data: str | Path | None = None,
    task: str = "prostate",
    methods: list[str] | None = None,
    device: str = "cpu",
    quiet: bool = True,
    sites: tuple[str, ...] = (),
    heldout: tuple[str, ...] = (),
    select_grid: tuple[PGAChoice, ...] = PGA_GRID,
    smd_preset: str | None = None,
) -> dict[str, Any]:
    """Run the comparison and write the results, report and plots to ``out``.

    ``smd_preset``: a name in :data:`smg_learning.config.SMD_PRESETS` whose fields
    replace those of the preset's ``smd`` section (``--smd-preset``).

    ``select_grid``: the grid of the :data:`SELECTED` rows' selection (tests shrink it).

    ``methods`` defaults to :data:`DEMO_METHODS` for the ``demo`` preset, else every row.
    """
    out = Path(out)
    cfg = with_smd_preset(run_preset(preset), smd_preset)
    methods = check_methods(
        list(methods or (DEMO_METHODS if preset == "demo" else benchmark_methods()))
    )
    if out.exists() and (out / "results.json").exists():
        raise InputError(out, "already holds a results.json; choose another --out")
    default_sites, default_held = BENCH_SITES[preset]
    if data is None and task == "fundus":
        default_sites, default_held = ("Domain1", "Domain2"), ("Domain3",)
    with tempfile.TemporaryDirectory(prefix="smg-bench-") as tmp:
        tmp = Path(tmp)
        if data is None:
            data = generate(tmp / "data", task=task, preset=preset, seed=0)
            sites, heldout = sites or default_sites, heldout or default_held
        loaded = load_continual(data, cfg, sites, heldout)
        # protocol: the selection sees only the training sites' training cases, and runs
        # before any benchmark row (see smg_learning.select)
        selection = None
        if any(m in SELECTED for m in methods):
            strategies = {SELECTED[m] for m in methods if m in SELECTED}
            if len(strategies) > 1:
                raise ValueError("one selection per benchmark: the SELECTED rows share it")
            selection = select_pga(
                loaded,
                cfg,
                method=strategies.pop(),
                grid=select_grid,
                seed=seeds[0],
                device=device,
            )
        rows, runs = [], {}
        bar = tqdm(total=len(seeds) * len(methods), desc="benchmark", disable=quiet)
        for seed in seeds:
            smd_source = None  # (run folder, SMD config, seconds) of this seed's trained SMD
            for method in methods:
                strategy, row_cfg = row_setup(
                    method, cfg, None if selection is None else selection["choice"]
                )
                uses_smd = STRATEGIES.get(strategy).replay == "smd"
                smd_from = None
                if uses_smd and smd_source is not None and smd_source[1] == row_cfg.smd:
                    smd_from = smd_source[0]  # same data, seed, sites and SMD config
                run_dir = tmp / f"run-{seed}-{method}"
                run_dir.mkdir()
                m = train_continual(
                    loaded,
                    row_cfg,
                    strategy,
                    run_dir,
                    seed=seed,
                    device=device,
                    quiet=True,
                    smd_from=smd_from,
                    train_last_smd=False,  # the segmenter never replays the last site
                )
                m["method"] = method
                if smd_from is not None:  # charge the row for the SMD it reused
                    m["train_seconds"] += smd_source[2]
                    m["smd_seconds"] = smd_source[2]
                elif uses_smd and smd_source is None:
                    smd_source = (run_dir, row_cfg.smd, m["smd_seconds"])
                runs[(seed, method)] = {"dir": run_dir, "metrics": m}
                rows.append(
                    {
                        "method": method,
                        "seed": seed,
                        "metrics": {k: m[k] for k in METRICS if k != "train_seconds"},
                        "train_seconds": m["train_seconds"],
                        "smd_seconds": m["smd_seconds"],
                        "dice_matrix": m["dice_matrix"],
                        # PGA rows: the alignment part's share of the update (mean per stage)
                        "align_share": m.get("align_share"),
                        "align_share_per_stage": m.get("align_share_per_stage"),
                    }
                )
                bar.update(1)
        bar.close()
        for r in rows:
            r["metrics"]["train_seconds"] = r["train_seconds"]
        extra: dict[str, Any] = {
            "sites": loaded.sites,
            "heldout": loaded.heldout,
            "task": loaded.task,
            "config": dataclasses.asdict(cfg),
            "smd_preset": smd_preset,
        }
        if selection is not None:
            extra["pga_selection"] = selection
        # cost ratios, measured once in this run (first seed)
        t0 = time.perf_counter()
        sizes = COST_SIZES[preset]
        if sizes is not None:
            extra.update(
                time_pga(loaded, cfg, seed=seeds[0], repeats=5 if preset == "tiny" else 10)
            )
        smd = None
        for method in methods:
            if runs[(seeds[0], method)]["metrics"]["_smd"] is not None:
                smd = runs[(seeds[0], method)]["metrics"]["_smd"]
                break
        if smd is not None and sizes is not None:
            judge = None
            if (seeds[0], "joint") in runs:
                judge = runs[(seeds[0], "joint")]["metrics"]["_model"]
            extra.update(
                time_samplers(
                    smd,
                    loaded,
                    cfg,
                    judge=judge,
                    ddim_steps=sizes["ddim_steps"],
                    per_site=sizes["per_site"],
                    train_steps=sizes["train_steps"],
                    seed=seeds[0],
                )
            )
            extra.update(
                site_classifier_accuracy(
                    smd,
                    loaded,
                    cfg,
                    per_site=sizes["clf_per_site"],
                    steps=sizes["clf_steps"],
                    seed=seeds[0],
                )
            )
        extra["cost_seconds"] = time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        figures = ["headline.png", "summary.png"] + [f"dice_{m}.png" for m in methods]
        figures += ["smd_samples.png"] if smd is not None else []
        figures += ["paired.png"] if paired_pairs(methods) else []
        results = make_results(
            "smg-learning",
            __version__,
            preset,
            seeds,
            rows,
            extra=extra,
            claims=claims_for(methods),
            figures=figures,
        )
        write_results(out, results)
        _plots(out, results, runs, loaded, smd, methods, seeds)
        write_report(
            out,
            results,
            "SMG-Learning benchmark",
            sections=_sections(results, methods),
            metrics=METRICS,
        )
    return results


def _mean_matrix(results: dict[str, Any], method: str) -> np.ndarray:
    mats = [np.asarray(r["dice_matrix"]) for r in results["rows"] if r["method"] == method]
    return np.mean(mats, axis=0)


def _plots(out, results, runs, data, smd, methods, seeds) -> None:
    stages = [f"after {s}" for s in data.sites]
    shown = [m for m in HEADLINE if m in methods] or methods[:3]
    heldout = f"; held out: {', '.join(data.heldout)}" if data.heldout else ""
    plot_heatmap_panels(
        {m: _mean_matrix(results, m) for m in shown},
        stages,
        data.columns,
        out / "headline.png",
        f"Dice after each training stage (rows) on every site (columns), mean over "
        f"{len(seeds)} seed(s){heldout}",
    )
    for method in methods:
        plot_heatmap(
            _mean_matrix(results, method),
            stages,
            data.columns,
            out / f"dice_{method}.png",
            f"{method}: Dice (stage x site, mean over seeds)",
        )
    values = {}
    for s in results["summary"]:
        for metric in ("memorizability", "generalizability"):
            st = s["metrics"][metric]
            values.setdefault(metric, {})[s["method"]] = (st["mean"], st["std"])
    plot_bars(values, out / "summary.png", "Memorizability and generalizability", "Dice")
    if paired_pairs(methods):
        plot_paired(results, paired_pairs(methods), out / "paired.png")
    if smd is not None:
        g = torch.Generator().manual_seed(seeds[0])
        k = 3
        sites = torch.arange(len(smd.config.site_names)).repeat_interleave(k)
        images, masks = smd.sample(sites, steps=smd_steps(results), generator=g)
        images, masks = resize_pairs(
            images, masks, data.parts["train"][data.sites[0]].images.shape[-1]
        )
        grid, labels = [], []
        for j, name in enumerate(smd.config.site_names):
            real = data.parts["train"][name]
            idx = np.linspace(0, len(real) - 1, k + 2).astype(int)[1:-1]
            row = [real.images[i, 0].numpy() for i in idx]
            row += [images[j * k + i, 0].numpy() for i in range(k)]
            row += [masks[j * k, 0].numpy().astype(float)]
            grid.append(row)
            labels.append(name)
        plot_image_grid(
            grid,
            out / "smd_samples.png",
            labels,
            col_labels=["real"] * k + ["SMD"] * k + ["SMD mask"],
            title="Real slices (left) and SMD samples (right) per site prompt",
        )


def paired_differences(
    results: dict[str, Any], method: str, baseline: str, metric: str
) -> list[float]:
    """Per seed, ``method``'s ``metric`` minus ``baseline``'s (seeds where both ran)."""
    by = {(r["method"], r["seed"]): r["metrics"][metric] for r in results["rows"]}
    return [
        by[(method, s)] - by[(baseline, s)]
        for s in results["seeds"]
        if (method, s) in by and (baseline, s) in by
    ]


#: replay's effect, reported as paired differences: (row, baseline)
REPLAY_PAIRS = (
    ("smd-replay", "finetune"),
    ("replay-real", "finetune"),
    ("smd-replay", "replay-real"),
    ("smg", "smd-replay"),
)


def _paired_table(results: dict[str, Any], pairs: list[tuple[str, str]]) -> str:
    """A markdown table of per-seed paired differences (mean ± sd, per seed) on both metrics."""
    lines = [
        "| row - baseline | memorizability: mean ± sd (per seed) "
        "| generalizability: mean ± sd (per seed) |",
        "|---|---|---|",
    ]
    for m, base in pairs:
        cells = []
        for metric in ("memorizability", "generalizability"):
            d = paired_differences(results, m, base, metric)
            sd = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
            per = ", ".join(f"{x:+.3f}" for x in d)
            cells.append(f"{np.mean(d):+.4f} ± {sd:.4f} ({per})" if d else "n/a")
        lines.append(f"| {m} - {base} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def paired_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """The (row, baseline) pairs the report and ``paired.png`` show: replay's effect
    (:data:`REPLAY_PAIRS`) and every PGA row against :data:`ALPHA0`."""
    pairs = [(m, b) for m, b in REPLAY_PAIRS if m in methods and b in methods]
    if ALPHA0 in methods:
        pairs += [
            (m, ALPHA0) for m in methods if m != ALPHA0 and (m == "smg" or m.startswith("smg-"))
        ]
    return pairs


def plot_paired(results: dict[str, Any], pairs: list[tuple[str, str]], path: Path) -> Path:
    """Forest plot of the paired differences: mean over seeds, bar from the lowest to the
    highest seed, one row per pair, memorizability and generalizability side by side."""
    groups = {}
    for m, base in pairs:
        groups[f"{m} - {base}"] = {
            metric: (float(np.mean(d)), min(d), max(d))
            for metric in ("memorizability", "generalizability")
            if (d := paired_differences(results, m, base, metric))
        }
    return plot_intervals(
        groups,
        path,
        f"Paired differences, mean and range over {len(results['seeds'])} seed(s)",
        "Dice difference (row - baseline)",
    )


def _replay_section(results: dict[str, Any], methods: list[str]) -> list[tuple[str, str]]:
    """Replay's effect: SMD replay and real replay against no replay, paired by seed."""
    pairs = [p for p in paired_pairs(methods) if p[1] != ALPHA0]
    if not pairs:
        return []
    return [("Replay's effect, paired differences (same seed)", _paired_table(results, pairs))]


def _pga_sections(results: dict[str, Any], methods: list[str]) -> list[tuple[str, str]]:
    """Alignment shares per PGA row, paired differences vs α = 0, and the selection."""
    out = []
    shares = {}
    for r in results["rows"]:
        if r.get("align_share") is not None:
            shares.setdefault(r["method"], []).append(r["align_share"])
    if shares:
        lines = ["| row | alignment share of the update, mean (min-max over seeds) |", "|---|---|"]
        for m, v in shares.items():
            lines.append(f"| {m} | {np.mean(v):.4f} ({min(v):.4f}-{max(v):.4f}) |")
        out.append(
            (
                "PGA alignment share",
                "||PGA gradient - the same objective's gradient at alpha = 0|| / ||PGA gradient||"
                ", per step, averaged per stage then over stages.\n\n" + "\n".join(lines),
            )
        )
    alpha0_pairs = [p for p in paired_pairs(methods) if p[1] == ALPHA0]
    if alpha0_pairs:
        table = _paired_table(results, alpha0_pairs)
        out.append(("Paired differences vs alpha = 0 (same seed)", table))
    sel = results.get("extra", {}).get("pga_selection")
    if sel:
        lines = ["| inner_lr | estimator | virtual step | validation memorizability |"]
        lines.append("|---|---|---|---|")
        for sc in sel["scores"]:
            lines.append(
                f"| {sc['inner_lr']:g} | {sc['estimator']} | {sc['virtual_step']} "
                f"| {sc['val_memorizability']:.4f} |"
            )
        c = sel["choice"]
        out.append(
            (
                "PGA selection (inner validation, training sites' training cases only)",
                f"Chosen for `smg-select`: inner_lr={c['inner_lr']:g}, {c['estimator']}, "
                f"{c['virtual_step']} (method {sel['method']}, seed {sel['seed']}, "
                f"{sel['val_fraction']:g} of each training site's training cases held out)."
                "\n\n" + "\n".join(lines),
            )
        )
    return out


def smd_steps(results: dict[str, Any]) -> int:
    return int(results["extra"]["config"]["smd"]["ddim_steps"])


def _sections(results: dict[str, Any], methods: list[str]) -> list[tuple[str, str]]:
    ex = results["extra"]
    lines = ["| measured in the same run | value |", "|---|---|"]

    def add(label: str, key: str, fmt: str = "{:.3f}") -> None:
        if key in ex:
            lines.append(f"| {label} | {fmt.format(ex[key])} |")

    add("PGA step / plain step (same samples, goal <= 2)", "pga_over_plain", "{:.2f}")
    add("first-order / exact PGA step time (goal <= 0.5)", "first_over_exact", "{:.2f}")
    add(
        f"DDIM-{ex.get('ddim_steps')} / DDPM-{ex.get('ddpm_steps')} sampling time (goal <= 0.05)",
        "ddim_over_ddpm_time",
        "{:.4f}",
    )
    add("downstream Dice, DDIM minus DDPM samples", "ddim_minus_ddpm_dice", "{:+.3f}")
    add(
        "downstream Dice of DDIM samples (generated mask vs joint model on the image)",
        "ddim_downstream_dice",
    )
    add("downstream Dice of DDPM samples (same)", "ddpm_downstream_dice")
    add(
        "reference: the same judge on real test slices of the same sites",
        "real_downstream_dice",
    )
    add("site classifier accuracy on SMD samples", "site_acc_smd")
    add("site classifier accuracy on real test slices", "site_acc_real_test")
    add("chance", "site_chance")
    add("plain step seconds", "plain_step_s", "{:.4f}")
    add("first-order PGA step seconds", "pga_step_s", "{:.4f}")
    add("exact PGA step seconds", "pga_exact_step_s", "{:.4f}")
    mats = []
    for m in methods:
        mat = _mean_matrix(results, m)
        head = "| stage | " + " | ".join(ex["sites"] + ex["heldout"]) + " |"
        sep = "|---" * (1 + mat.shape[1]) + "|"
        body = "\n".join(
            f"| after {s} | " + " | ".join(f"{v:.3f}" for v in row) + " |"
            for s, row in zip(ex["sites"], mat)
        )
        mats.append(f"**{m}**\n\n{head}\n{sep}\n{body}\n")
    setup = (
        f"Task `{ex['task']}`; training order {' -> '.join(ex['sites'])}; held-out "
        f"{', '.join(ex['heldout']) or 'none'}. Memorizability: mean Dice on the training "
        "sites after the last stage. Generalizability: mean over stages of the mean Dice on "
        "sites not yet trained (and held-out). BWT: mean of D[T, i] - D[i, i]. HD95 in pixels "
        "(training sites, last stage). train_seconds includes SMD training and replay sampling."
    )
    costs = [("Costs and SMD quality", "\n".join(lines))] if len(lines) > 2 else []
    return [
        ("Setup", setup),
        *_replay_section(results, methods),
        *_pga_sections(results, methods),
        *costs,
        ("Dice matrices (mean over seeds)", "\n".join(mats)),
        (
            "Plots",
            "`headline.png` (Dice matrices side by side), `summary.png`, "
            "`dice_<method>.png`, `smd_samples.png`, `paired.png` (paired differences).",
        ),
    ]
