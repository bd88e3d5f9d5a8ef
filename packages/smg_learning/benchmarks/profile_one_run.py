"""Profile one representative piece of the ``small`` benchmark: seed 0 of ``smd-replay``.

``smd-replay`` is the row that trains the SMD (the other SMD rows reuse it), so it holds
most of the benchmark's time. Usage (from the repository root)::

    python packages/smg_learning/benchmarks/profile_one_run.py [OUT.prof] [--threads 1]

The process's CPU threads are pinned to ``--threads`` whatever ``OMP_NUM_THREADS``
says; the default, 1, is the count ``profile.md`` was measured with
(``OMP_NUM_THREADS=1`` then).

Prints the synthetic-data and loading seconds, the run's time split and the top entries
by cumulative time; the findings are in ``benchmarks/profile.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from medcommon.train import fix_threads
from smg_learning.benchmark import bench_preset
from smg_learning.config import run_preset
from smg_learning.continual import train_continual
from smg_learning.data import load_continual
from smg_learning.synth import generate


def main(out: str = "smd-replay.prof", threads: int = 1) -> None:
    fix_threads(threads)
    cfg = run_preset("small")
    bench = bench_preset("small")
    sites, heldout = bench.sites, bench.heldout
    tmp = Path(tempfile.mkdtemp(prefix="smg-profile-"))
    t0 = time.perf_counter()
    data = generate(tmp / "data", task="prostate", preset="small", seed=0)
    t1 = time.perf_counter()
    loaded = load_continual(data, cfg, sites, heldout)
    print(f"synth {time.perf_counter() - t0:.1f} s (generate {t1 - t0:.1f} s)")
    prof = cProfile.Profile()
    prof.enable()
    m = train_continual(loaded, cfg, "smd-replay", tmp / "run", seed=0, train_last_smd=False)
    prof.disable()
    keys = ("train_seconds", "segmenter_seconds", "smd_seconds", "replay_sample_seconds")
    print({k: round(m[k], 1) for k in keys})
    prof.dump_stats(out)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="smd-replay.prof", help="the profile file")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads, pinned (default 1)")
    args = parser.parse_args()
    main(args.out, args.threads)
