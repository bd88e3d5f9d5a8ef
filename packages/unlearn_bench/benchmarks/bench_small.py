"""unlearn-bench benchmark: vanilla, seven unlearning methods and retrain on both scenarios.

Usage: ``python bench_small.py --out DIR [--preset small] [--seeds 0 1 2] [--workers N]
[--threads N]`` (the same as ``unlearn-bench benchmark``): every process runs pinned to
``--threads`` CPU threads (default 1, whatever ``OMP_NUM_THREADS`` says); writes
DIR/results.json, DIR/report.md and DIR/*.png.
The measured ``small`` results are kept beside this file in ``small/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medcommon.cli.args import BENCHMARK_THREADS
from unlearn_bench.benchmark import run_benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="small")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--workers", type=int, default=None, help="default: the CPU cores at --threads each"
    )
    p.add_argument(
        "--threads", type=int, default=BENCHMARK_THREADS,
        help=f"CPU threads per process, pinned (default {BENCHMARK_THREADS})",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    run_benchmark(
        args.out, preset=args.preset, seeds=args.seeds, workers=args.workers,
        threads=args.threads, quiet=args.quiet,
    )  # fmt: skip


if __name__ == "__main__":
    main()
