"""Metrics against independent references: rouge-score, scikit-learn, hand counts."""

from __future__ import annotations

import numpy as np
import pytest
from rouge_score import rouge_scorer
from sklearn.metrics import roc_auc_score

from medcommon.metrics import mia_auc
from unlearn_bench.evaluate import task_metrics


def test_task_metrics_against_rouge_score_and_hand_counts():
    items = [
        {"type": "mcq", "modality": "image_text", "answer": "B"},
        {"type": "mcq", "modality": "text_only", "answer": "C"},
        {"type": "gen", "modality": "image_text", "answer": "the lung nodule is small"},
        {"type": "gen", "modality": "text_only", "answer": "Dr. Reyes"},
        {"type": "cloze", "modality": "image_text", "answer": "Aetna"},
        {"type": "cloze", "modality": "text_only", "answer": "1980-07-25"},
    ]
    preds = [
        "B. something",
        "a",
        "a small lung nodule",
        "Dr. Reyes",
        "insurer aetna.",
        "1980-07-26",
    ]
    m = task_metrics(items, preds)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    r1 = scorer.score(items[2]["answer"], preds[2])["rougeL"].fmeasure
    r2 = scorer.score(items[3]["answer"], preds[3])["rougeL"].fmeasure
    assert m["mcq_acc"] == 0.5 and m["mcq_acc_image_text"] == 1.0 and m["mcq_acc_text_only"] == 0.0
    assert m["rougeL"] == pytest.approx((r1 + r2) / 2)
    assert m["rougeL_image_text"] == pytest.approx(r1)
    # LCS of "the lung nodule is small" / "a small lung nodule" = "lung nodule" (2 tokens): F = 2PR/(P+R)
    p, r = 2 / 4, 2 / 5
    assert r1 == pytest.approx(2 * p * r / (p + r))
    assert (
        m["cloze_acc"] == 0.5
        and m["cloze_acc_image_text"] == 1.0
        and m["cloze_acc_text_only"] == 0.0
    )


def test_mia_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    members, non = rng.normal(1, 1, 40), rng.normal(0, 1, 30)
    expected = roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[members, non])
    assert mia_auc(members, non) == pytest.approx(expected)
