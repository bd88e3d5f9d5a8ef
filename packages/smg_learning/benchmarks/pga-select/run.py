"""PGA chosen on inner validation (issue #12): the benchmark with an ``smg-select`` row.

From the repository root::

    python packages/smg_learning/benchmarks/pga-select/run.py --preset demo --seeds 0 1 2 \\
        --methods finetune,smd-replay,smg,smg-alpha0,smg-sym,smg-adam,smg-select --out DIR

It takes the ``smg-learning benchmark`` flags (``--config``/``--set`` and
``--threads``, the CPU threads it pins first, included) and
runs that benchmark, with one more row: before any row trains,
:func:`pga_select.select_pga` picks α, estimator and virtual step on a validation split
of the training sites' training cases (the first seed; ``--grid preregistered``, the
default, is :data:`pga_select.PGA_GRID_PREREGISTERED`, the grid committed before any
test-site result; ``--grid post_hoc`` the later grid the committed ``../demo-pga/`` run
used, chosen after test results of six of its points were committed; α = 0 in both),
and ``smg-select`` is ``smg`` with that choice. ``results.json`` gains
``extra.pga_selection`` and the two claims below (written before the run in
``../demo-pga/``), ``report.md`` the selection's scores. Until issue #19 this was
``smg-learning benchmark --methods ...,smg-select``; the committed run in
``../demo-pga/`` came from that command at commit 81d9779.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pga_select import GRIDS, PGA_GRID, PGAChoice, select_pga

from medcommon.cli import make_parser, run_main
from medcommon.report import Claim
from smg_learning import __version__
from smg_learning.benchmark import (
    VARIANTS,
    BenchSpec,
    bench_config,
    load_bench_data,
    pin_threads,
    train_rows,
    write_benchmark,
)
from smg_learning.claims import GEN, MEM, claims_for
from smg_learning.cli import benchmark_args

SELECTED = "smg-select"
#: the claims of the ``smg-select`` row (margin 0.01, as for the other PGA rows)
CLAIMS: tuple[Claim, ...] = (
    Claim(
        "PGA chosen on inner validation adds memorizability over re-weighting only",
        SELECTED,
        "smg-alpha0",
        MEM,
        margin=0.01,
    ),
    Claim(
        "PGA chosen on inner validation adds generalizability over re-weighting only",
        SELECTED,
        "smg-alpha0",
        GEN,
        margin=0.01,
    ),
)


def selection_section(sel: dict[str, Any]) -> tuple[str, str]:
    """The report section of the selection: every grid point's validation score."""
    lines = [
        "| inner_lr | estimator | virtual step | validation memorizability |",
        "|---|---|---|---|",
    ]
    for sc in sel["scores"]:
        lines.append(
            f"| {sc['inner_lr']:g} | {sc['estimator']} | {sc['virtual_step']} "
            f"| {sc['val_memorizability']:.4f} |"
        )
    c = sel["choice"]
    return (
        "PGA selection (inner validation, training sites' training cases only)",
        f"Grid `{sel.get('grid', 'post_hoc')}`. Chosen for `{SELECTED}`: inner_lr={c['inner_lr']:g}, {c['estimator']}, "
        f"{c['virtual_step']} (method {sel['method']}, seed {sel['seed']}, "
        f"{sel['val_fraction']:g} of each training site's training cases held out)."
        "\n\n" + "\n".join(lines),
    )


def run_select_benchmark(
    spec: BenchSpec, grid: tuple[PGAChoice, ...] = PGA_GRID, grid_name: str = "preregistered"
) -> dict[str, Any]:
    """The benchmark of ``spec`` with the ``smg-select`` row (``grid``: tests shrink it;
    ``grid_name`` is recorded with the selection)."""
    pin_threads(spec)  # --threads, whatever OMP_NUM_THREADS says
    # the choice is known only after the selection; the placeholder names the row
    variants = {**VARIANTS, SELECTED: ("smg", {})}
    cfg, methods = bench_config(spec, variants)
    with tempfile.TemporaryDirectory(prefix="smg-select-bench-") as tmp:
        data = load_bench_data(spec, cfg, Path(tmp))
        # protocol: the selection sees only the training sites' training cases, and runs
        # before any benchmark row
        selection = None
        if SELECTED in methods:
            selection = select_pga(
                data, cfg, method="smg", grid=grid, seed=spec.seeds[0], device=spec.device
            )
            selection["grid"] = grid_name
            variants[SELECTED] = ("smg", {"pga": selection["choice"]})
        bench = train_rows(spec, data, cfg, methods, Path(tmp), variants)
        claims = claims_for(methods) + [
            c for c in CLAIMS if c.method in methods and c.baseline in methods
        ]
        return write_benchmark(
            spec,
            bench,
            extra={"pga_selection": selection} if selection else None,
            claims=claims,
            sections=[selection_section(selection)] if selection else (),
            sources=["packages/smg_learning/benchmarks/pga-select/run.py"],
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("pga-select", __doc__.splitlines()[0], __version__)
    benchmark_args(parser)
    parser.add_argument(
        "--grid", choices=sorted(GRIDS), default="preregistered",
        help="the selection's grid: preregistered (default; committed before any test result) "
        "or post_hoc (the later grid of the committed demo-pga run)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    run_select_benchmark(BenchSpec.from_args(args), GRIDS[args.grid], args.grid)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'report.md'} and plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
