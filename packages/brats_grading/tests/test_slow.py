"""The method's effect on small synthetic data (minutes): CMG beats early fusion on AUC."""

from __future__ import annotations

import pytest

from brats_grading.benchmark import run_benchmark


@pytest.mark.slow
def test_cmg_beats_early_fusion_on_synthetic_data(tmp_path):
    res = run_benchmark(
        tmp_path / "bench", "small", seeds=[0], quiet=True, methods=["early-fusion", "cmg"]
    )
    auc = {s["method"]: s["metrics"]["auc"]["mean"] for s in res["summary"]}
    assert auc["cmg"] > auc["early-fusion"], auc
