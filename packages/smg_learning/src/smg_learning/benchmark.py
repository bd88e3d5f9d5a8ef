"""``smg-learning benchmark``: every strategy over seeds on one multi-site dataset.

Writes ``DIR/results.json`` (medcommon schema; ``claims`` checks :mod:`smg_learning.claims`,
``provenance`` names the claims file's commit), ``DIR/report.md``, the headline figure
(``DIR/headline.png``: the stage x site Dice matrices of ``finetune``, ``smg`` and
``joint`` side by side), a Dice-matrix heat map per row (``DIR/dice_<method>.png``), the
summary bars (``DIR/summary.png``), the paired differences (``DIR/paired.png``) and a
grid of SMD samples beside real slices per site (``DIR/smd_samples.png``).

Every row's config is the preset's ``run`` section <- ``--config`` <- ``--set``, then
the row's own change: rows are the registered strategies plus :data:`VARIANTS` (a
strategy under a config change, e.g. ``smg-alpha0``: PGA without its alignment step).
The preset's ``benchmark`` section (:class:`BenchConfig`) gives the synthetic set's
training order, held-out sites and default rows. Work shared between rows of one seed:
the synthetic data is generated and loaded once; every SMD-replay row (``smd-replay``,
``smg``, ``smg-alpha0``, ...) replays from one SMD per seed, trained by the first of them
and reused by the others (``smd_from``; its seconds are charged to each). The SMD is not
taught the last training site (no row replays it); ``smd_samples.png`` uses the first
seed's replay SMD, which knows the earlier training sites.

Determinism (issue #25): :func:`run_benchmark` first pins the process's CPU threads to
``--threads`` (:func:`pin_threads`; default 1) whatever ``OMP_NUM_THREADS`` says, with
torch's deterministic algorithms on, and every random draw of a row comes from its seed
(data: seed 0; model init, batch order, replay, shifts, the SMD's training noise and
samples: the row's seed), so the same command gives the same ``results.json`` metrics.
Claims are decided on the paired per-seed differences with a 95 % interval
(:mod:`smg_learning.claims`).

The steps (:func:`pin_threads`, :func:`bench_config`, :func:`load_bench_data`,
:func:`train_rows`, :func:`write_benchmark`) are public so that an experiment adds its
own around them (and calls :func:`pin_threads` first):
``benchmarks/costs/`` measures cost ratios on the trained rows, ``benchmarks/pga-select/``
adds a row whose PGA settings are chosen on inner validation.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medcommon.cli.args import BENCHMARK_THREADS
from medcommon.config import config_to_dict, replace_nested, resolve_config
from medcommon.errors import InputError
from medcommon.provenance import module_source
from medcommon.report import (
    Claim,
    make_results,
    plot_bars,
    plot_heatmap,
    plot_image_grid,
    plot_intervals,
    write_report,
    write_results,
)
from medcommon.report.plots import plot_heatmap_panels
from medcommon.train import fix_threads
from smg_learning import __version__
from smg_learning.claims import claims_for
from smg_learning.config import PRESETS, RunConfig, run_preset
from smg_learning.continual import train_continual
from smg_learning.data import ContinualData, load_continual
from smg_learning.replay import resize_pairs
from smg_learning.smd import SiteModulatedDiffusion
from smg_learning.strategies import STRATEGIES
from smg_learning.synth import generate

METRICS = ["memorizability", "generalizability", "bwt", "hd95", "train_seconds"]


@dataclass(frozen=True)
class BenchConfig:
    """The ``benchmark`` section of a preset file (defaults: ``small`` and ``full``).

    ``sites``/``heldout``: the training order and held-out sites of the synthetic
    prostate set (``fundus_*``: of the synthetic fundus set); ``methods``: the rows run
    when ``--methods`` is not given (empty: every row).
    """

    sites: tuple[str, ...] = ("RUNMC", "BMC", "I2CVB", "UCL")
    heldout: tuple[str, ...] = ("BIDMC", "HK")
    methods: tuple[str, ...] = ()
    fundus_sites: tuple[str, ...] = ("Domain1", "Domain2")
    fundus_heldout: tuple[str, ...] = ("Domain3",)


def bench_preset(name: str) -> BenchConfig:
    """The ``benchmark`` section of preset ``name``."""
    return PRESETS.section(name, "benchmark", BenchConfig)


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
#: the α = 0 row that the PGA variants are paired with in the report
ALPHA0 = "smg-alpha0"
#: the matrices of the headline figure, when present: the baseline, the method, the bound
HEADLINE = ("finetune", "smg", "joint")

Variants = Mapping[str, tuple[str, Mapping[str, Any]]]


def _names(text: str | None, flag: str) -> tuple[str, ...]:
    """A comma-separated ``--methods``/``--sites`` value as names (None: none given)."""
    if text is None:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputError(flag, "expected a comma-separated list of names")
    return names


@dataclass(frozen=True)
class BenchSpec:
    """What a benchmark was asked to do (the ``benchmark`` command's flags), passed whole.

    ``methods``, ``sites`` and ``heldout`` empty: the preset's (``benchmark`` section).
    ``threads``: CPU threads of the process (``--threads``), pinned by :func:`pin_threads`
    whatever ``OMP_NUM_THREADS`` says, so that the numbers do not depend on the machine.
    """

    out: Path
    preset: str = "small"
    seeds: tuple[int, ...] = (0, 1, 2)
    data: Path | None = None
    task: str = "prostate"
    methods: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    heldout: tuple[str, ...] = ()
    config_file: Path | None = None
    overrides: tuple[str, ...] = ()
    device: str = "cpu"
    quiet: bool = True
    threads: int = BENCHMARK_THREADS

    @classmethod
    def from_args(cls, args: Any) -> BenchSpec:
        """The spec of parsed ``benchmark`` flags (``smg_learning.cli.benchmark_args``)."""
        from medcommon.train.accelerator import resolve_device

        return cls(
            out=Path(args.out),
            preset=args.preset,
            seeds=tuple(args.seeds),
            data=args.data,
            task=args.task,
            methods=_names(args.methods, "--methods"),
            sites=_names(args.sites, "--sites"),
            heldout=_names(args.heldout, "--heldout"),
            config_file=args.config,
            overrides=tuple(args.overrides or ()),
            device=resolve_device(args.device),
            quiet=args.quiet,
            threads=args.threads,
        )


def benchmark_methods(variants: Variants = VARIANTS) -> list[str]:
    """Every row name: the registered strategies, then ``variants``."""
    return [*STRATEGIES.names(), *variants]


def check_methods(methods: Iterable[str], variants: Variants = VARIANTS) -> list[str]:
    """``methods`` if every name is a row name, else an :class:`InputError` on ``--methods``."""
    known = benchmark_methods(variants)
    methods = list(methods)
    for m in methods:
        if m not in known:
            raise InputError("--methods", f"unknown method {m!r}; choose from {', '.join(known)}")
    return methods


def row_setup(method: str, cfg: RunConfig, variants: Variants = VARIANTS) -> tuple[str, RunConfig]:
    """The strategy name and config of benchmark row ``method``."""
    if method in variants:
        strategy, overrides = variants[method]
        return strategy, replace_nested(cfg, **overrides)
    return method, cfg


def pin_threads(spec: BenchSpec) -> None:
    """What every benchmark process does first: pin its CPU threads to ``spec.threads``
    (torch, BLAS, ``OMP_NUM_THREADS`` for child processes) and turn on torch's
    deterministic algorithms (:func:`medcommon.train.fix_threads`). Float reductions
    differ between thread counts and training amplifies that (a ``finetune`` run moved
    by 0.012 between one and two threads), so the count is the command's, never the
    environment's. The benchmark runs in this one process (no workers)."""
    fix_threads(spec.threads)


def bench_config(spec: BenchSpec, variants: Variants = VARIANTS) -> tuple[RunConfig, list[str]]:
    """The rows' base config (preset <- ``--config`` <- ``--set``) and the rows to run;
    checks that ``spec.out`` holds no results yet."""
    cfg = resolve_config(
        RunConfig, base=run_preset(spec.preset), file=spec.config_file, overrides=spec.overrides
    )
    rows = spec.methods or bench_preset(spec.preset).methods or benchmark_methods(variants)
    methods = check_methods(rows, variants)
    if (spec.out / "results.json").exists():
        raise InputError(spec.out, "already holds a results.json; choose another --out")
    return cfg, methods


def load_bench_data(spec: BenchSpec, cfg: RunConfig, workdir: Path) -> ContinualData:
    """The benchmark's data: ``spec.data``, or the preset's synthetic set written to
    ``workdir/data`` (seed 0) with the preset's training order and held-out sites."""
    data, sites, heldout = spec.data, spec.sites, spec.heldout
    if data is None:
        bench = bench_preset(spec.preset)
        fundus = spec.task == "fundus"
        data = generate(workdir / "data", task=spec.task, preset=spec.preset, seed=0)
        sites = sites or (bench.fundus_sites if fundus else bench.sites)
        heldout = heldout or (bench.fundus_heldout if fundus else bench.heldout)
    return load_continual(data, cfg, sites, heldout)


@dataclass
class BenchRuns:
    """What :func:`train_rows` trained: one result row per (seed, method), and each run's
    metrics (with the in-memory ``_model`` and ``_smd``) by (seed, method)."""

    data: ContinualData
    cfg: RunConfig
    methods: list[str]
    seeds: list[int]
    rows: list[dict[str, Any]]
    runs: dict[tuple[int, str], dict[str, Any]]

    def smd(self) -> SiteModulatedDiffusion | None:
        """The first seed's replay SMD (trained by its first SMD row), or None."""
        for method in self.methods:
            smd = self.runs[(self.seeds[0], method)]["_smd"]
            if smd is not None:
                return smd
        return None


def train_rows(
    spec: BenchSpec,
    data: ContinualData,
    cfg: RunConfig,
    methods: Sequence[str],
    workdir: Path,
    variants: Variants = VARIANTS,
) -> BenchRuns:
    """Train every row (``methods`` x ``spec.seeds``) in run folders under ``workdir``."""
    rows, runs = [], {}
    seeds = list(spec.seeds)
    bar = tqdm(total=len(seeds) * len(methods), desc="benchmark", disable=spec.quiet)
    for seed in seeds:
        smd_source = None  # (run folder, SMD config, seconds) of this seed's trained SMD
        for method in methods:
            strategy, row_cfg = row_setup(method, cfg, variants)
            uses_smd = STRATEGIES.get(strategy).replay == "smd"
            smd_from = None
            if uses_smd and smd_source is not None and smd_source[1] == row_cfg.smd:
                smd_from = smd_source[0]  # same data, seed, sites and SMD config
            run_dir = workdir / f"run-{seed}-{method}"
            run_dir.mkdir()
            m = train_continual(
                data,
                row_cfg,
                strategy,
                run_dir,
                seed=seed,
                device=spec.device,
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
            runs[(seed, method)] = m
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "metrics": {k: m[k] for k in METRICS},
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
    return BenchRuns(data, cfg, list(methods), seeds, rows, runs)


def write_benchmark(
    spec: BenchSpec,
    bench: BenchRuns,
    *,
    extra: Mapping[str, Any] | None = None,
    claims: Iterable[Claim] | None = None,
    sections: Sequence[tuple[str, str]] = (),
    sources: Sequence[str] = (),
) -> dict[str, Any]:
    """Write ``results.json``, ``report.md`` and the plots to ``spec.out``; returns the results.

    ``extra``: facts added to ``results["extra"]``; ``claims``: default
    :func:`smg_learning.claims.claims_for` the rows; ``sections``: report sections
    placed after the PGA sections; ``sources``: claims or protocol files besides
    :mod:`smg_learning.claims` (and ``--config``) for the provenance block.
    """
    data, methods, seeds, smd = bench.data, bench.methods, bench.seeds, bench.smd()
    out = spec.out
    out.mkdir(parents=True, exist_ok=True)
    figures = ["headline.png", "summary.png"] + [f"dice_{m}.png" for m in methods]
    figures += ["smd_samples.png"] if smd is not None else []
    figures += ["paired.png"] if paired_pairs(methods) else []
    files = [module_source("smg_learning.claims"), *PRESETS.sources(spec.preset), *sources]
    if spec.config_file is not None:
        files.append(str(spec.config_file))
    results = make_results(
        "smg-learning",
        __version__,
        spec.preset,
        seeds,
        bench.rows,
        extra={
            "sites": data.sites,
            "heldout": data.heldout,
            "task": data.task,
            "config": config_to_dict(bench.cfg),
            "config_file": None if spec.config_file is None else str(spec.config_file),
            "overrides": list(spec.overrides),
            **(extra or {}),
        },
        claims=claims_for(methods) if claims is None else claims,
        figures=figures,
        sources=files,
    )
    write_results(out, results)
    _plots(out, results, data, smd, methods, seeds)
    write_report(
        out,
        results,
        "SMG-Learning benchmark",
        sections=_sections(results, methods, sections),
        metrics=METRICS,
    )
    return results


def run_benchmark(spec: BenchSpec) -> dict[str, Any]:
    """Run the comparison and write the results, report and plots to ``spec.out``."""
    pin_threads(spec)
    cfg, methods = bench_config(spec)
    with tempfile.TemporaryDirectory(prefix="smg-bench-") as tmp:
        data = load_bench_data(spec, cfg, Path(tmp))
        bench = train_rows(spec, data, cfg, methods, Path(tmp))
        return write_benchmark(spec, bench)


def _mean_matrix(results: dict[str, Any], method: str) -> np.ndarray:
    mats = [np.asarray(r["dice_matrix"]) for r in results["rows"] if r["method"] == method]
    return np.mean(mats, axis=0)


def _plots(out, results, data, smd, methods, seeds) -> None:
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
    """Alignment shares per PGA row, and paired differences vs α = 0."""
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
    return out


def smd_steps(results: dict[str, Any]) -> int:
    return int(results["extra"]["config"]["smd"]["ddim_steps"])


def _sections(
    results: dict[str, Any], methods: list[str], extra: Sequence[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    ex = results["extra"]
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
    return [
        ("Setup", setup),
        *_replay_section(results, methods),
        *_pga_sections(results, methods),
        *extra,
        ("Dice matrices (mean over seeds)", "\n".join(mats)),
        (
            "Plots",
            "`headline.png` (Dice matrices side by side), `summary.png`, "
            "`dice_<method>.png`, `smd_samples.png`, `paired.png` (paired differences).",
        ),
    ]
