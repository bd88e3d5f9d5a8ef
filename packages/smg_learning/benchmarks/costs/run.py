"""Cost ratios and SMD sample quality, measured in the same run as the benchmark rows.

From the repository root::

    python packages/smg_learning/benchmarks/costs/run.py --preset small --seeds 0 1 2 --out DIR

It takes the ``smg-learning benchmark`` flags (``--config``/``--set`` and
``--threads``, the CPU threads it pins first, included), runs
that benchmark and then, on the first seed (:mod:`costs` beside this file): the PGA step
time against a plain step and first-order against exact PGA; DDIM-k against DDPM-T
sampling time, and how well each sampler's generated masks agree with a real-data
segmenter (the ``joint`` row's model, or one trained for the purpose) on the generated
images; a site classifier trained on real slices applied to SMD samples. Sizes per
preset: ``sizes.yaml``. ``results.json`` gets the measurements in ``extra``,
``report.md`` the "Costs and SMD quality" table.

Until issue #19 the ``benchmark`` command measured these itself; the cost tables of
``../small/``, ``../smd-v32/`` and ``../smd-v32-pool64/`` came from it at their recorded
commits.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from costs import site_classifier_accuracy, time_pga, time_samplers

from medcommon.cli import make_parser, run_main
from medcommon.config import read_yaml_mapping
from medcommon.errors import InputError
from smg_learning import __version__
from smg_learning.benchmark import (
    BenchRuns,
    BenchSpec,
    bench_config,
    load_bench_data,
    pin_threads,
    train_rows,
    write_benchmark,
)
from smg_learning.cli import benchmark_args

HERE = Path(__file__).resolve().parent


def cost_sizes(preset: str) -> dict[str, int]:
    """The measurement sizes of ``preset`` (``sizes.yaml``)."""
    table = read_yaml_mapping(HERE / "sizes.yaml", "cost sizes", "presets")
    if preset not in table:
        raise InputError(
            "--preset", f"no cost sizes for {preset!r}; choose from {', '.join(table)}"
        )
    return dict(table[preset])


def measure_costs(bench: BenchRuns, sizes: dict[str, int]) -> dict[str, Any]:
    """Every measurement on the first seed: PGA step times, samplers, site classifier."""
    data, cfg, seed = bench.data, bench.cfg, bench.seeds[0]
    t0 = time.perf_counter()
    out: dict[str, Any] = dict(time_pga(data, cfg, seed=seed, repeats=sizes["repeats"]))
    smd = bench.smd()
    if smd is not None:
        joint = bench.runs.get((seed, "joint"))
        out.update(
            time_samplers(
                smd,
                data,
                cfg,
                judge=None if joint is None else joint["_model"],
                ddim_steps=sizes["ddim_steps"],
                per_site=sizes["per_site"],
                train_steps=sizes["train_steps"],
                seed=seed,
            )
        )
        out.update(
            site_classifier_accuracy(
                smd, data, cfg, per_site=sizes["clf_per_site"], steps=sizes["clf_steps"], seed=seed
            )
        )
    out["cost_seconds"] = time.perf_counter() - t0
    return out


def cost_section(ex: dict[str, Any]) -> tuple[str, str]:
    """The report's "Costs and SMD quality" table of the measurements ``ex``."""
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
    add("reference: the same judge on real test slices of the same sites", "real_downstream_dice")
    add("site classifier accuracy on SMD samples", "site_acc_smd")
    add("site classifier accuracy on real test slices", "site_acc_real_test")
    add("chance", "site_chance")
    add("plain step seconds", "plain_step_s", "{:.4f}")
    add("first-order PGA step seconds", "pga_step_s", "{:.4f}")
    add("exact PGA step seconds", "pga_exact_step_s", "{:.4f}")
    return "Costs and SMD quality", "\n".join(lines)


def run_cost_benchmark(spec: BenchSpec) -> dict[str, Any]:
    """The benchmark of ``spec``, then the cost measurements on its rows."""
    pin_threads(spec)  # --threads, whatever OMP_NUM_THREADS says
    sizes = cost_sizes(spec.preset)
    cfg, methods = bench_config(spec)
    with tempfile.TemporaryDirectory(prefix="smg-costs-") as tmp:
        data = load_bench_data(spec, cfg, Path(tmp))
        bench = train_rows(spec, data, cfg, methods, Path(tmp))
        costs = measure_costs(bench, sizes)
        return write_benchmark(
            spec,
            bench,
            extra=costs,
            sections=[cost_section(costs)],
            sources=["packages/smg_learning/benchmarks/costs/costs.py"],
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("costs", __doc__.splitlines()[0], __version__)
    benchmark_args(parser)
    args = parser.parse_args(argv)
    run_cost_benchmark(BenchSpec.from_args(args))
    print(f"wrote {args.out / 'results.json'}, {args.out / 'report.md'} and plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
