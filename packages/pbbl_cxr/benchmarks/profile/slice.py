"""Time one (setting, seed) job of the ``small`` benchmark, to extrapolate the whole run.

    OMP_NUM_THREADS=1 python packages/pbbl_cxr/benchmarks/profile/slice.py gbp-0.95 [--profile]

Prints JSON: the data path written as PNGs and decoded (what the benchmark did before
issue #14) and in memory (what it does now), then every row's training, in wall and
CPU seconds (CPU seconds do not depend on other jobs loading the machine). With
``--profile`` also the top cProfile entries of the in-memory job.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

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


def main(name: str, profile: bool) -> dict:
    setting = next(s for s in preset_settings("small") if s.name == name)
    cfg, scfg = run_preset("small"), setting.synth_config("small")
    out: dict = {"setting": name}
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
    print(
        json.dumps(
            main(sys.argv[1] if len(sys.argv) > 1 else "gbp-0.95", "--profile" in sys.argv),
            indent=1,
        )
    )
