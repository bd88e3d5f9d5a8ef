"""Alignment share of PGA's update per virtual step and estimator, at the default α.

``python benchmarks/alignment_shares.py [--preset demo] [--threads 1] [--out benchmarks/alignment_shares.json]``

One ``pga-real`` run per (virtual step, estimator) on the preset's synthetic benchmark
sites (real replay: no SMD to train), seed 0; each run's ``align_share`` (the norm of
the PGA gradient minus the same objective's gradient at α = 0, over the PGA
gradient's norm, per step, averaged per stage) is written per stage and overall.
Only this training-side quantity is written (no test Dice: the PGA grid of
``pga-select/pga_select.py`` is set from it). The process's CPU threads are pinned to
``--threads`` (default: the benchmark's, 1) whatever ``OMP_NUM_THREADS`` says, and
written to the output (the committed file predates the flag and records no count).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from medcommon.cli.args import BENCHMARK_THREADS
from medcommon.config import replace_nested
from medcommon.train import fix_threads
from smg_learning.benchmark import bench_preset
from smg_learning.config import run_preset
from smg_learning.continual import train_continual
from smg_learning.data import load_continual
from smg_learning.synth import generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("alignment_shares.json"))
    p.add_argument("--threads", type=int, default=BENCHMARK_THREADS, help="CPU threads, pinned")
    args = p.parse_args()
    threads = fix_threads(args.threads)
    cfg = run_preset(args.preset)
    bench = bench_preset(args.preset)
    sites, held = bench.sites, bench.heldout
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = load_continual(
            generate(Path(tmp) / "d", "prostate", args.preset, seed=0), cfg, sites, held
        )
        for step in ("sgd", "adam", "normalized"):
            for est in ("first_order", "symmetric"):
                t0 = time.perf_counter()
                run_cfg = replace_nested(cfg, pga={"virtual_step": step, "estimator": est})
                m = train_continual(data, run_cfg, "pga-real", None, seed=0)
                rows.append(
                    {
                        "virtual_step": step,
                        "estimator": est,
                        "inner_lr": run_cfg.pga.inner_lr,
                        "align_share": m["align_share"],
                        "align_share_per_stage": m["align_share_per_stage"],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(
        json.dumps({"preset": args.preset, "threads": threads, "rows": rows}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
