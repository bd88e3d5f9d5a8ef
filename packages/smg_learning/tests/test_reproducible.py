"""Same code, same seed, same numbers (issue #25): the benchmark pins its own CPU threads.

Float reductions add in another order on another number of threads, and training
amplifies that (a ``finetune`` run moved by 0.012 between one and two threads), so the
``benchmark`` command pins its process to ``--threads`` whatever ``OMP_NUM_THREADS``
says (:func:`smg_learning.benchmark.pin_threads`). The benchmark runs in one process:
there are no workers whose number could matter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from medcommon.report import load_results
from medcommon.report.compare import compare

#: rows that cover the SMD (trained, sampled as replay) and PGA; two seeds so that the
#: claims are decided on paired differences
METHODS = "finetune,smg"


def _benchmark(out: Path, omp_threads: int) -> subprocess.Popen:
    """``smg-learning benchmark`` at preset ``tiny`` in a fresh process whose environment
    asks for ``omp_threads`` threads; the command pins its own count (``--threads 1``,
    the cheap one on a loaded 2-core machine). Output goes to ``out.log``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(omp_threads), "MKL_NUM_THREADS": str(omp_threads)}
    cmd = [sys.executable, "-m", "smg_learning.cli", "benchmark", "--out", str(out)]
    cmd += ["--preset", "tiny", "--seeds", "0", "1", "--methods", METHODS, "--threads", "1"]
    with open(out.with_suffix(".log"), "w") as log:
        return subprocess.Popen([*cmd, "--quiet"], env=env, stdout=log, stderr=subprocess.STDOUT)


def _results(proc: subprocess.Popen, out: Path) -> dict:
    proc.wait(timeout=600)
    assert proc.returncode == 0, out.with_suffix(".log").read_text()
    return load_results(out)


def test_benchmark_numbers_do_not_depend_on_omp_num_threads(tmp_path) -> None:
    """The same command under ``OMP_NUM_THREADS=1`` and ``=3`` gives identical metrics
    and claim decisions (``medcommon compare``: largest difference 0). At this size the
    Dice metrics alone would not notice a thread change (too few pixels to flip), so
    the rows' PGA alignment shares, a float of every training step's gradients, are
    compared exactly too: without the pinning they differ in the 7th digit."""
    # side by side: each also runs under the other's load
    runs = {name: _benchmark(tmp_path / name, n) for name, n in (("a", 1), ("b", 3))}
    try:
        a, b = (_results(proc, tmp_path / name) for name, proc in runs.items())
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    res = compare(a, b)
    assert res["max_abs"] == 0 and not res["differences"], res["differences"]
    assert not res["missing"] and not res["claims"], (res["missing"], res["claims"])
    assert len(a["rows"]) == 4 and a["claims"]
    assert all(c["pairs"] == 2 and c["interval"] is not None for c in a["claims"])
    for ra, rb in zip(a["rows"], b["rows"]):
        assert (ra["method"], ra["seed"]) == (rb["method"], rb["seed"])
        assert ra["dice_matrix"] == rb["dice_matrix"]
        assert ra["align_share_per_stage"] == rb["align_share_per_stage"], ra["method"]
    shares = [r["align_share"] for r in a["rows"] if r["method"] == "smg"]
    assert len(shares) == 2 and all(s > 0 for s in shares)  # the witness is there
    assert a["provenance"]["threads"] == b["provenance"]["threads"] == 1  # and recorded
