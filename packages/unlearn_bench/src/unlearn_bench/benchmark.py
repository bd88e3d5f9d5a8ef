"""The paper's comparison: vanilla, every unlearning method and retrain, per scenario and seed.

For each (scenario, seed): generate the dataset, fine-tune the vanilla model, retrain
on retain only from the same initialisation, run each method from the vanilla model,
evaluate everything (UES and PrivLeak against the retrained model, see
:mod:`unlearn_bench.ues` and :mod:`unlearn_bench.evaluate`). Writes ``results.json``, ``report.md`` and ``*.png`` (medcommon.report).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcommon.cli.args import BENCHMARK_THREADS
from medcommon.errors import InputError
from medcommon.provenance import module_source
from medcommon.report import make_results, plot_bars, write_report, write_results
from medcommon.run import require_fresh_out
from medcommon.train import fix_threads, pinned_map
from unlearn_bench import PACKAGE, __version__
from unlearn_bench.claims import claims_for
from unlearn_bench.config import (
    PRESETS,
    SCENARIOS,
    SynthConfig,
    benchmark_preset,
    check_forget_ratio,
    eval_preset,
    synth_preset,
)
from unlearn_bench.data import FILES, check_dataset
from unlearn_bench.evaluate import against_reference, evaluate_run, flatten, task_table
from unlearn_bench.methods import METHODS, PAPER_ORDER
from unlearn_bench.synth import generate
from unlearn_bench.train import finetune, run_spec, unlearn
from unlearn_bench.ues import knowledge_score

HEADLINE = "headline.png"
SUBSETS = ("forget", "test", "retain", "general")
TABLE = [
    "forget_score",
    "test_score",
    "retain_score",
    "general_score",
    "forget_mcq_lik_acc",
    "retain_mcq_lik_acc",
    "forget_mcq_acc",
    "forget_rougeL",
    "forget_cloze_acc",
    "retain_mcq_acc",
    "retain_rougeL",
    "retain_cloze_acc",
    "ues",
    "ues_vanilla",
    "forget_quality",
    "mia_auc",
    "privleak_mink",
    "privleak",
    "privleak_kn_mink",
    "time_ratio",
]


def _metrics(res: dict[str, Any]) -> dict[str, float]:
    flat = flatten(res)
    for s in SUBSETS:
        if s in res["subsets"]:
            flat[f"{s}_score"] = knowledge_score(res["subsets"][s])
    return flat


def run_benchmark(
    out: str | Path,
    *,
    preset: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    scenarios: Sequence[str] | None = None,
    forget_ratio: float = 0.10,
    methods: Sequence[str] | None = None,
    data: str | Path | None = None,
    device: str = "auto",
    quiet: bool = False,
    workers: int | None = None,
    threads: int = BENCHMARK_THREADS,
) -> dict[str, Any]:
    """Run the benchmark into ``out``; returns the ``results.json`` object.

    ``methods`` / ``scenarios`` default to the preset's ``benchmark`` section: every
    method and scenario, except under ``demo`` (NPO and GA on privacy). The claims of
    :mod:`unlearn_bench.claims` that the run can check are checked and kept in results.json.
    Every process that runs a piece (this one, and each worker) pins itself to ``threads``
    CPU threads first (:func:`medcommon.train.fix_threads`, deterministic kernels too),
    whatever ``OMP_NUM_THREADS`` or the machine says, so the numbers depend on the seeds
    and ``threads`` only; ``results.json`` records the count (``provenance.threads``).
    ``workers`` > 1 runs that many (scenario, seed) pieces at once, each in its own
    process with the same ``threads``; None: as many as the usable CPU cores hold at
    ``threads`` each (at least one, at most one per piece). Every piece seeds itself, so
    the rows are the same whatever the number of workers, in the same order.
    """
    fix_threads(threads)  # first: everything below, and every worker, runs pinned
    plan = benchmark_preset(preset)
    if workers is not None and workers < 1:
        raise InputError("--workers", f"must be at least 1, got {workers}")
    if scenarios is None:
        scenarios = plan.scenarios
    if not methods:
        methods = plan.methods or PAPER_ORDER
    for s in scenarios:
        if s not in SCENARIOS:
            raise InputError(
                "--scenarios", f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}"
            )
    methods = list(methods)
    for m in methods:
        METHODS.get(m)
    dcfg = dataclasses.replace(synth_preset(preset), forget_ratio=forget_ratio)
    check_forget_ratio(forget_ratio, dcfg.n_entities)
    if data is not None:
        check_dataset(data, FILES)  # the training QA too: refused before any run starts
        meta = Path(data) / "dataset.json"
        scenarios = [json.loads(meta.read_text())["scenario"] if meta.is_file() else "custom"]
    out = Path(out)
    require_fresh_out(out / "runs", "benchmark runs folder", "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        _Piece(scenario, seed, preset, methods, dcfg, data, out, device, quiet)
        for scenario in scenarios
        for seed in seeds
    ]
    workers = min(workers or default_workers(threads), len(jobs))
    t_start = time.perf_counter()
    rows = [row for piece_rows in _map(jobs, workers, threads) for row in piece_rows]
    extra = _extra(rows, methods, time.perf_counter() - t_start)
    extra["workers"] = float(workers)
    figures = [HEADLINE, *(f"scores_{s}.png" for s in scenarios), "ues.png"]
    results = make_results(
        PACKAGE,
        __version__,
        preset,
        list(seeds),
        rows,
        extra,
        claims=claims_for(methods, scenarios),
        figures=figures,
        sources=[module_source("unlearn_bench.claims"), *PRESETS.sources(preset)],
    )
    write_results(out, results)
    _plots(out, results, scenarios)
    _headline(out / HEADLINE, results, scenarios[0])
    write_report(
        out,
        results,
        "unlearn-bench: MLLMU-Med style unlearning benchmark",
        _sections(results, scenarios),
        TABLE,
    )
    return results


@dataclasses.dataclass(frozen=True)
class _Piece:
    """One (scenario, seed) of the benchmark: everything it needs, picklable for a worker."""

    scenario: str
    seed: int
    preset: str
    methods: Sequence[str]
    dcfg: SynthConfig
    data: str | Path | None
    out: Path
    device: str
    quiet: bool


def default_workers(threads: int) -> int:
    """Worker processes when ``--workers`` is not given: the usable CPU cores at ``threads``
    each (at least one). Only the speed follows the machine: every worker runs pinned to
    ``threads``, so the numbers are the same with any count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // threads)


def _map(jobs: Sequence[_Piece], workers: int, threads: int) -> list[list[dict[str, Any]]]:
    """Each piece's rows, in the order of ``jobs`` (:func:`medcommon.train.pinned_map`)."""
    return pinned_map(_run_piece, jobs, workers=workers, threads=threads)


def _run_piece(job: _Piece) -> list[dict[str, Any]]:
    """Data, vanilla and retrained models (shared by every method), each method, their rows.

    Every model is evaluated once: vanilla and retrain first (their ``eval-all.json`` is
    what UES and PrivLeak of the others read back), the retrained model without itself
    as a reference (its PrivLeak against itself is 0 by definition).
    """
    scenario, seed, quiet, device = job.scenario, job.seed, job.quiet, job.device
    ecfg = eval_preset(job.preset)
    data = job.data
    ddir = Path(data) if data is not None else job.out / "data" / f"{scenario}-s{seed}"
    if data is None:
        generate(ddir, scenario, job.dcfg, seed=seed)
    runs = job.out / "runs" / scenario / f"s{seed}"
    common = {"seed": seed, "preset": job.preset, "device": device, "quiet": quiet}
    _say(quiet, f"[{scenario} seed {seed}] finetune vanilla")
    van_m = finetune(run_spec("finetune", runs / "vanilla", ddir, **common))
    _say(quiet, f"[{scenario} seed {seed}] retrain (retain only)")
    gold_m = finetune(run_spec("retrain", runs / "retrain", ddir, **common))
    van = evaluate_run(runs / "vanilla", ddir, ecfg, device=device, quiet=quiet)
    gold = evaluate_run(
        runs / "retrain",
        ddir,
        ecfg,
        vanilla=runs / "vanilla",
        reference=runs / "retrain",
        device=device,
        quiet=quiet,
    )
    van.update(against_reference(van, gold, van))
    base = {"setting": scenario, "seed": seed}
    rows = [
        {
            **base,
            "method": "vanilla",
            "metrics": _metrics(van),
            "train_seconds": van_m["train_seconds"],
        },
        {
            **base,
            "method": "retrain",
            "metrics": {**_metrics(gold), "time_ratio": 1.0},
            "train_seconds": gold_m["train_seconds"],
        },
    ]
    for m in job.methods:
        _say(quiet, f"[{scenario} seed {seed}] unlearn {m}")
        vanilla = {"model": runs / "vanilla" / "model"}
        um = unlearn(run_spec("unlearn", runs / m, ddir, method=m, options=vanilla, **common))
        res = evaluate_run(
            runs / m, ddir, ecfg, reference=runs / "retrain", device=device, quiet=quiet
        )
        metrics = {**_metrics(res), "time_ratio": um["train_seconds"] / gold_m["train_seconds"]}
        rows.append({**base, "method": m, "metrics": metrics, "train_seconds": um["train_seconds"]})
    return rows


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def _extra(rows: list[dict], methods: Sequence[str], seconds: float) -> dict[str, float]:
    extra: dict[str, float] = {"benchmark_seconds": seconds}
    ratios = [r["metrics"]["time_ratio"] for r in rows if r["method"] in methods]
    extra["unlearn_over_retrain_time_mean"] = float(np.mean(ratios))
    extra["unlearn_over_retrain_time_max"] = float(np.max(ratios))
    for m in methods:
        extra[f"time_ratio_{m}"] = float(
            np.mean([r["metrics"]["time_ratio"] for r in rows if r["method"] == m])
        )
    extra["eval_questions_per_second"] = float(
        np.mean([r["metrics"]["questions_per_second"] for r in rows])
    )
    return extra


def _plots(out: Path, results: dict[str, Any], scenarios: Sequence[str]) -> None:
    ues_values: dict[str, dict[str, tuple[float, float]]] = {}
    for scenario in scenarios:
        values: dict[str, dict[str, tuple[float, float]]] = {}
        for s in results["summary"]:
            if s.get("setting", "") != scenario:
                continue
            mets = s["metrics"]
            values[s["method"]] = {
                k: (mets[f"{k}_score"]["mean"], mets[f"{k}_score"]["std"]) for k in SUBSETS
            }
            if "ues" in mets:
                ues_values.setdefault(s["method"], {})[scenario] = (
                    mets["ues"]["mean"],
                    mets["ues"]["std"],
                )
        plot_bars(
            values,
            out / f"scores_{scenario}.png",
            f"{scenario}: knowledge score per subset",
            "knowledge score",
        )
    plot_bars(ues_values, out / "ues.png", "Unlearning Efficiency Score (ours)", "UES")


def _headline(path: Path, results: dict[str, Any], scenario: str) -> None:
    """The first picture: forget vs retain MCQ accuracy per model (mean ± std over seeds).

    Unlearning worked where a method's forget bar falls toward the retrained model's while
    its retain bar stays at vanilla's height.
    """
    values: dict[str, dict[str, tuple[float, float]]] = {}
    for s in results["summary"]:
        if s.get("setting", "") != scenario:
            continue
        mets = s["metrics"]
        values[s["method"]] = {
            name: (mets[key]["mean"], mets[key]["std"])
            for name, key in (("forget", "forget_mcq_acc"), ("retain", "retain_mcq_acc"))
            if key in mets
        }
    seeds = len(results["seeds"])
    plot_bars(
        values,
        path,
        f"{scenario}: MCQ accuracy, forget vs retain set (mean ± std, {seeds} seeds)",
        "MCQ accuracy (chance 0.25)",
    )


def _sections(results: dict[str, Any], scenarios: Sequence[str]) -> list[tuple[str, str]]:
    extra = results.get("extra", {})
    lines = ["| measured in the same run | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in extra.items()]
    plots = "".join(f"![{s}](scores_{s}.png)\n" for s in scenarios) + "![UES](ues.png)\n"
    claims = (
        "Claims and margins are declared in `unlearn_bench/claims.py` before any run: MCQ "
        "accuracy, absolute, margin 0.10 (0 for a head-to-head ordering). Each is decided on "
        "the paired per-seed differences method − baseline with a 95 % t-interval: it holds "
        "when the whole interval clears the margin, fails when it lies wholly on the other "
        "side, and is undecided when it straddles the margin (or fewer than two seeds pair "
        "up). A post hoc claim (written after its result was seen) is marked so and never "
        "counted in a headline. A claim about a method or scenario that this run leaves out "
        "is not checked here."
    )
    legend = (
        "`*_score` is the knowledge score of a subset (mean of chance-corrected MCQ accuracy, "
        "ROUGE-L and cloze accuracy; see README, UES). Forget/test: lower is better after "
        "unlearning; retain/general: higher is better. `time_ratio` = unlearning time / retrain "
        "time of the same seed. `ues` is anchored on the retrained model (retrain = 1, vanilla = 0, "
        "over-forgetting penalised); `ues_vanilla` is the former vanilla-anchored score. "
        "`privleak_mink` (Min-40%, the headline as in MUSE and open-unlearning) and "
        "`privleak` (loss) are MUSE's PrivLeak against the retrained model on every forget "
        "probe vs every general probe; `privleak_kn_mink` on generation and cloze probes "
        "only (ideal 0; negative = still leaks). `*_mcq_lik_acc`: MCQ by option likelihood. "
        "`forget_quality` is the KS-test p-value of the forget truth ratios against the "
        "retrained model (TOFU); `ues` is null where vanilla has nothing to forget."
    )
    order = ["vanilla", "retrain", *[m for m in PAPER_ORDER if m not in ("vanilla", "retrain")]]
    order += sorted({s["method"] for s in results["summary"]} - set(order))
    tables = [
        (
            f"Subset x task x modality ({scenario})",
            task_table(results["summary"], order, setting=scenario),
        )
        for scenario in scenarios
    ]
    return [
        ("Claims", claims),
        ("Legend", legend),
        *tables,
        ("Timing and throughput", "\n".join(lines)),
        ("Plots", plots),
    ]
