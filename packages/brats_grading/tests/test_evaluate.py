"""Grading metrics against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, f1_score, recall_score, roc_auc_score

from brats_grading.evaluate import grading_metrics


def test_grading_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random(60) < 0.75).astype(int)  # HGG-heavy, as in BraTS
    p = np.clip(0.5 * y + rng.normal(0.25, 0.25, 60), 0, 1)
    m = grading_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, pos_label=1))
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))


def test_paired_differences_table_by_seed_and_fold():
    """cmg - early per (seed, fold): +0.1, -0.1, +0.3 -> mean +0.1, std 0.2, 2 of 3 higher."""
    from brats_grading.benchmark import paired_differences

    aucs = {("cmg", 0, 0): 0.9, ("cmg", 0, 1): 0.7, ("cmg", 1, 0): 0.8,
            ("early-fusion", 0, 0): 0.8, ("early-fusion", 0, 1): 0.8, ("early-fusion", 1, 0): 0.5,
            ("single-t1", 0, 0): 0.5}  # fmt: skip
    rows = [
        {"method": m, "seed": s, "fold": f, "metrics": {"auc": a}} for (m, s, f), a in aucs.items()
    ]
    table = paired_differences(rows, "cmg", ["early-fusion", "single-t1", "missing"])
    lines = table.strip().splitlines()
    assert lines[2] == "| early-fusion | +0.100 ± 0.200 | 2 / 3 |"
    assert lines[3] == "| single-t1 | +0.400 ± nan | 1 / 1 |"
    assert len(lines) == 4  # a method with no runs gets no row
