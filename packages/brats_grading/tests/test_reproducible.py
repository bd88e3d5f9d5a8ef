"""Same code, same seeds, same numbers (issue #25), whatever the environment says.

The benchmark command and the grid script each run twice in fresh processes, under
``OMP_NUM_THREADS=1`` and ``=3`` (the grid also with 1 and 2 workers), each pinned to
one thread per process (``--threads 1``; the grid's default; one thread also keeps the
runs fast on a loaded machine, where two OpenMP threads spin): every metric and
claim decision must be bit-identical (:func:`medcommon.report.compare.compare`). Both
pin their CPU threads with :func:`medcommon.train.fix_threads`; without that, torch
follows ``OMP_NUM_THREADS`` and the float32 reductions of training add up in another
order, so the runs differ.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmark_scripts import BENCHMARKS, load

from medcommon.report.compare import compare

ROOT = Path(__file__).resolve().parents[3]
grid = load("grid/run.py", "brats_grid_run")


def _run(cmd: list[str], omp: int) -> None:
    """``cmd`` in a fresh process whose environment says ``OMP_NUM_THREADS=omp``."""
    env = os.environ | {"OMP_NUM_THREADS": str(omp)}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _identical(a: dict, b: dict) -> None:
    diff = compare(a, b)
    assert diff["differences"] == [] and diff["max_abs"] == 0, diff["differences"][:5]
    assert diff["missing"] == [] and diff["claims"] == [], (diff["missing"], diff["claims"])


def test_benchmark_numbers_do_not_depend_on_omp_num_threads(tmp_path):
    results = {}
    for omp in (1, 3):
        out = tmp_path / f"omp{omp}"
        _run(
            [sys.executable, "-m", "brats_grading.cli", "benchmark", "--out", str(out),
             "--preset", "tiny", "--seeds", "0", "--methods", "single-t1ce", "cmg",
             "--threads", "1", "--quiet"],
            omp,
        )  # fmt: skip
        results[omp] = json.loads((out / "results.json").read_text())
    a, b = results[1], results[3]
    assert len(a["rows"]) == 4  # 2 methods x 2 folds x 1 seed
    assert [c["pairs"] for c in a["claims"]] == [2]  # CMG vs T1ce, decided on 2 pairs
    assert a["claims"][0]["interval"] is not None
    _identical(a, b)
    assert [c["interval"] for c in a["claims"]] == [c["interval"] for c in b["claims"]]
    # the pinned count is the one recorded, not the environment's
    assert a["provenance"]["threads"] == b["provenance"]["threads"] == 1


def test_grid_numbers_do_not_depend_on_omp_num_threads_or_workers(tmp_path):
    results, per_case = {}, {}
    settings = [s.name for s in grid.P.SETTINGS[:2]]
    for omp, workers in ((1, 1), (3, 2)):
        out = tmp_path / f"omp{omp}-w{workers}"
        _run(
            [sys.executable, str(BENCHMARKS / "grid" / "run.py"), "--out", str(out),
             "--preset", "tiny", "--settings", *settings, "--methods", "cmg", "single-t1ce",
             "--seeds", "0", "--workers", str(workers), "--quiet"],
            omp,
        )  # fmt: skip
        results[workers] = json.loads((out / "results.json").read_text())
        per_case[workers] = json.loads(gzip.decompress((out / "predictions.json.gz").read_bytes()))
    a, b = results[1], results[2]
    assert len(a["rows"]) == 2 * 2 * 2  # 2 settings x 2 methods x 2 folds
    _identical(a, b)
    assert per_case[1] == per_case[2]  # every out-of-fold prediction
    assert a["analysis"] == b["analysis"]
    assert a["protocol"]["threads"] == b["protocol"]["threads"] == grid.THREADS == 1
