"""Time one (setting, seed) job of the ``small`` benchmark, to extrapolate the whole run.

    python packages/pbbl_cxr/benchmarks/profile/slice.py gbp-0.95 [--profile] [--threads N]

Prints JSON: the data path written as PNGs and decoded (what the benchmark did before
issue #14) and in memory (what it does now), then every row's training, in wall and
CPU seconds (CPU seconds do not depend on other jobs loading the machine). With
``--profile`` also the top cProfile entries of the in-memory job. ``--threads`` (default
1, the count of the measurements in ``README.md``) is pinned by
:func:`medcommon.train.fix_threads` whatever ``OMP_NUM_THREADS`` says.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time
from pathlib import Path

from medcommon.train import fix_threads
from pbbl_cxr.benchmark import (
    _run_methods,
    method_names,
    preset_settings,
    synth_datasets,
)
from pbbl_cxr.config import run_preset
from pbbl_cxr.data import DataOptions, load_split
from pbbl_cxr.synth import generate


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def main(name: str, profile: bool, threads: int = 1) -> dict:
    fix_threads(threads)
    setting = next(s for s in preset_settings("small") if s.name == name)
    cfg, scfg = run_preset("small"), setting.synth_config("small")
    out: dict = {"setting": name, "threads": threads}
    w0, c0 = clock()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "d", scfg, seed=0)
        for split in ("train", "valid", "test"):
            load_split(Path(tmp) / "d", split, DataOptions(image_size=cfg.model.image_size))
    w1, c1 = clock()
    out["png_round_trip"] = {"wall": w1 - w0, "cpu": c1 - c0}
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    w0, c0 = clock()
    data = synth_datasets(scfg, 0, cfg.model.image_size)
    w1, c1 = clock()
    out["in_memory"] = {"wall": w1 - w0, "cpu": c1 - c0}
    rows = {}
    for method in method_names():
        w0, c0 = clock()
        _run_methods(data, name, cfg, [method], 0, "cpu", True)
        w1, c1 = clock()
        rows[method] = {"wall": w1 - w0, "cpu": c1 - c0}
    out["rows"] = rows
    out["job_cpu"] = out["in_memory"]["cpu"] + sum(r["cpu"] for r in rows.values())
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setting", nargs="?", default="gbp-0.95", help="a `small` setting")
    parser.add_argument("--profile", action="store_true", help="print the top cProfile entries")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads, pinned (default 1)")
    args = parser.parse_args()
    print(json.dumps(main(args.setting, args.profile, args.threads), indent=1))
