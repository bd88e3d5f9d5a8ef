"""The method's effect on small synthetic data (minutes), over 3 seeds x 3 folds.

What fusing modalities can add depends on the data: only evidence that T1ce lacks.
This test uses the grid's most favourable setting for fusion, fixed before the grid
ran (issue #11): T1ce and FLAIR cues uncorrelated within a grade, weak T2 evidence,
baseline noise, on a fresh draw of the `small` set (generator seed 7; the grid uses
1234). There CMG must beat the best single modality (T1ce) in mean AUC, run by run
in most (seed, fold) pairs, by giving the noise branches (T1, T2) little weight.
Whether CMG beats early fusion, and where, is the grid's question, not this test's.
"""

from __future__ import annotations

import numpy as np
import pytest

from brats_grading.benchmark import run_benchmark
from brats_grading.config import synth_preset
from brats_grading.synth import GradeCues, write_synthetic

COMPLEMENTARY = GradeCues(correlation=0.0, t2_shift=0.2, nuisance_noise=0.15)


@pytest.mark.slow
def test_cmg_beats_t1ce_where_flair_adds_evidence(tmp_path):
    data = write_synthetic(
        tmp_path / "data", synth_preset("small"), "2019", seed=7, quiet=True, cues=COMPLEMENTARY
    )
    methods = ["single-t1ce", "cmg"]
    res = run_benchmark(tmp_path / "bench", "small", seeds=[0, 1, 2], data=data, quiet=True,
                        methods=methods)  # fmt: skip
    auc = {s["method"]: s["metrics"]["auc"]["mean"] for s in res["summary"]}
    assert auc["cmg"] > auc["single-t1ce"] + 0.01, auc
    runs = {(r["method"], r["seed"], r["fold"]): r for r in res["rows"]}
    keys = sorted({(s, f) for _, s, f in runs})
    gain = [runs["cmg", s, f]["metrics"]["auc"] - runs["single-t1ce", s, f]["metrics"]["auc"]
            for s, f in keys]  # fmt: skip
    # paired: the t1ce branch of cmg is the single-t1ce model, so this is what fusing adds
    assert np.mean(np.array(gain) > 0) >= 6 / 9, gain
    # the mechanism: the noise branches (t1, t2) get little fusion weight
    noise = [runs["cmg", s, f]["fusion"]["weights"] for s, f in keys]
    assert np.mean([w["t1"] + w["t2"] for w in noise]) < 0.25, noise
