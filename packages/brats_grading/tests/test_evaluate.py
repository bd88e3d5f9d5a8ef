"""Grading metrics against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, recall_score, roc_auc_score

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
