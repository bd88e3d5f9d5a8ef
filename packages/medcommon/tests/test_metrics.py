"""Every metric against an independent reference: hand-computed values, MONAI, scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from medcommon.errors import InputError
from medcommon.metrics import (
    accuracy,
    ap,
    auc,
    bias_aucs,
    continual_summary,
    dice,
    exact_match,
    f1,
    group_accuracy,
    hd95,
    mia_auc,
    rouge_l,
    sensitivity,
    specificity,
    substring_match,
    youden_threshold,
)


def test_dice_hand_computed_and_against_monai():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True  # 16 px
    b[4:8, 4:6] = True  # 8 px, overlap rows 4-5 x cols 4-5 = 4 px
    assert dice(a, b) == pytest.approx(2 * 4 / (16 + 8))
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=True, reduction="mean")
    metric(torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float())
    assert dice(a, b) == pytest.approx(metric.aggregate().item())
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    with pytest.raises(InputError, match="shape"):
        dice(a, b[:5])


def _brute_hd95(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0)) -> float:
    from scipy import ndimage

    def surface(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m)) * np.asarray(spacing)

    sa, sb = surface(a), surface(b)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def test_hd95_shifted_square_against_brute_force():
    a = np.zeros((32, 32), bool)
    b = np.zeros((32, 32), bool)
    a[10:20, 10:20] = True
    b[10:20, 13:23] = True  # the same square shifted 3 px along x
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, b) == pytest.approx(_brute_hd95(a, b))
    # With 2 mm per pixel along x the distance doubles.
    assert hd95(a, b, spacing=(1.0, 2.0)) == pytest.approx(6.0)
    assert hd95(a, a) == 0.0
    assert hd95(np.zeros_like(a), np.zeros_like(a)) == 0.0
    assert math.isinf(hd95(a, np.zeros_like(a)))


def test_hd95_irregular_shapes_against_brute_force():
    rng = np.random.default_rng(3)
    from scipy import ndimage

    a = ndimage.gaussian_filter(rng.standard_normal((40, 40)), 4) > 0.02
    b = ndimage.gaussian_filter(rng.standard_normal((40, 40)), 4) > 0.02
    assert hd95(a, b) == pytest.approx(_brute_hd95(a, b), rel=1e-6)


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(y * 0.6 + rng.normal(0, 0.5, 200), 1)  # rounded: many ties
    return y, s


def test_auc_and_ap_match_sklearn_with_ties(scores):
    y, s = scores
    assert auc(y, s) == pytest.approx(skm.roc_auc_score(y, s))
    assert ap(y, s) == pytest.approx(skm.average_precision_score(y, s))
    assert math.isnan(auc(np.ones(5, int), np.arange(5.0)))


def test_threshold_metrics_match_sklearn(scores):
    y, s = scores
    pred = (s > 0.3).astype(int)
    assert accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert sensitivity(y, pred) == pytest.approx(skm.recall_score(y, pred))
    assert specificity(y, pred) == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert f1(y, pred) == pytest.approx(skm.f1_score(y, pred))


def test_youden_threshold_matches_sklearn_roc_curve(scores):
    y, s = scores
    fpr, tpr, thr = skm.roc_curve(y, s)
    best = thr[np.argmax(tpr - fpr)]  # sklearn predicts positive when score >= thr
    ours = youden_threshold(y, s)
    np.testing.assert_array_equal(s > ours, s >= best)


def _roc_curve_youden_predictions(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    fpr, tpr, thr = skm.roc_curve(y, s)
    return s >= thr[np.argmax(tpr - fpr)]  # first maximum: the highest threshold


def test_youden_threshold_matches_roc_curve_with_tied_scores():
    rng = np.random.default_rng(1)
    for n in (3, 10, 40, 300):
        for _ in range(60):
            y = rng.integers(0, 2, n)
            y[:2] = (0, 1)
            s = np.round(rng.normal(size=n) + y, 1)  # many tied scores
            ours = youden_threshold(y, s)
            np.testing.assert_array_equal(s > ours, _roc_curve_youden_predictions(y, s))


def test_youden_threshold_ties_in_j_by_hand():
    # Points (score >= 4): TPR 1/2, FPR 0 and (score >= 2): TPR 1, FPR 1/2 both give J = 1/2;
    # roc_curve's argmax keeps the higher threshold, so only the score 4 is positive.
    assert youden_threshold([0, 1, 0, 1], [1.0, 2.0, 3.0, 4.0]) == 3.5
    # A reversed scorer: J <= 0 everywhere; roc_curve's first point (nothing positive) wins.
    y, s = np.array([1, 0]), np.array([0.0, 1.0])
    assert not (s > youden_threshold(y, s)).any()
    assert not _roc_curve_youden_predictions(y, s).any()
    # Adjacent floats: the midpoint rounds onto the upper score; the split must stay exact.
    lo = 0.3
    hi = np.nextafter(lo, 1.0)
    s = np.array([lo, hi])
    np.testing.assert_array_equal(s > youden_threshold([0, 1], s), [False, True])


def test_youden_threshold_100k_scores_in_seconds():
    import time

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 100_000)
    s = (rng.normal(size=100_000) + y).astype(np.float32)  # float32 probs: many ties
    start = time.perf_counter()
    ours = youden_threshold(y, s)
    seconds = time.perf_counter() - start
    np.testing.assert_array_equal(s > ours, _roc_curve_youden_predictions(y, s))
    # The N x unique-scores version took 19.5 s and ~7 GB at 60k scores.
    assert seconds < 2.0, f"youden_threshold took {seconds:.2f} s at 100k scores"


def test_bias_aucs_hand_computed():
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    b = np.array([1, 1, 0, 0, 0, 0, 1, 1])  # first four aligned, last four conflicting
    s = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.6, 0.5, 0.7])
    out = bias_aucs(y, s, b)
    assert out["auc_aligned"] == 1.0
    # conflicting: positives 0.3, 0.6 vs negatives 0.5, 0.7 -> pairs won: (0.6>0.5) = 1 of 4
    assert out["auc_conflicting"] == pytest.approx(0.25)
    assert out["auc_balanced"] == pytest.approx(0.625)
    assert out["auc"] == pytest.approx(skm.roc_auc_score(y, s))


def test_group_accuracy_hand_computed():
    y = [0, 0, 1, 1, 1, 0]
    p = [0, 1, 1, 1, 0, 0]
    g = ["a", "a", "b", "b", "c", "c"]
    out = group_accuracy(y, p, g)
    assert out == {"a": 0.5, "b": 1.0, "c": 0.5, "worst": 0.5, "mean": pytest.approx(2 / 3)}


def test_continual_summary_hand_computed():
    # 3 stages, 3 training sites + 1 held-out site.
    d = np.array(
        [
            [0.90, 0.40, 0.30, 0.20],
            [0.70, 0.85, 0.50, 0.30],
            [0.60, 0.75, 0.80, 0.40],
        ]
    )
    out = continual_summary(d)
    assert out["memorizability"] == pytest.approx((0.60 + 0.75 + 0.80) / 3)
    g0 = (0.40 + 0.30 + 0.20) / 3
    g1 = (0.50 + 0.30) / 2
    g2 = 0.40
    assert out["generalizability"] == pytest.approx((g0 + g1 + g2) / 3)
    assert out["bwt"] == pytest.approx(((0.60 - 0.90) + (0.75 - 0.85)) / 2)
    with pytest.raises(InputError, match="matrix"):
        continual_summary(np.ones((3, 2)))


def test_rouge_l_hand_computed_lcs():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5 tokens.
    p, r = 5 / 5, 5 / 6
    assert rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(
        2 * p * r / (p + r)
    )
    assert rouge_l("completely different", "the cat") == 0.0
    # recall (open-unlearning's rougeL_recall) = LCS / reference length; precision / answer's
    assert rouge_l("the cat on the mat", "the cat sat on the mat", measure="recall") == r
    assert rouge_l("the cat on the mat", "the cat sat on the mat", measure="precision") == p
    with pytest.raises(ValueError, match="measure"):
        rouge_l("a", "a", measure="f1")


def test_exact_and_substring_match():
    assert exact_match("Dr. Smith!", "dr smith") == 1.0
    assert exact_match("Dr Smithers", "dr smith") == 0.0
    assert substring_match("The physician is Dr. Jane Doe.", "jane doe") == 1.0
    assert substring_match("unknown", "jane doe") == 0.0


def test_mia_auc_against_sklearn():
    rng = np.random.default_rng(1)
    members, non = rng.normal(1, 1, 50), rng.normal(0, 1, 70)
    y = np.r_[np.ones(50), np.zeros(70)]
    assert mia_auc(members, non) == pytest.approx(skm.roc_auc_score(y, np.r_[members, non]))


def test_nan_scores_are_rejected():
    with pytest.raises(InputError, match="y_score.*NaN"):
        auc([0, 1], [0.1, float("nan")])
    with pytest.raises(InputError, match="binary"):
        auc([0, 2], [0.1, 0.2])


def test_hd95_with_an_unknown_spacing_entry_is_in_voxels():
    from medcommon.metrics import hd95

    a = np.zeros((16, 16), bool)
    b = np.zeros((16, 16), bool)
    a[4:8, 4:8] = True
    b[4:8, 7:11] = True
    assert hd95(a, b, spacing=(None, None)) == hd95(a, b)
    assert hd95(a, b, spacing=(2.0, 2.0)) == 2 * hd95(a, b)


def test_bootstrap_auc_rows_match_auc_and_paired_interval_is_narrower():
    """auc_rows equals medcommon.metrics.auc row by row (ties included); a paired
    difference of two correlated scorers has a narrower interval than either AUC."""
    from medcommon.metrics.bootstrap import auc_rows, bootstrap_aucs, percentile_ci

    rng = np.random.default_rng(0)
    y = (rng.random(120) < 0.3).astype(int)
    base = y + rng.normal(0, 1.0, y.size)
    s = np.stack([np.round(base, 1), base + rng.normal(0, 0.2, y.size)])
    np.testing.assert_allclose(auc_rows(y, s), [auc(y, r) for r in s])
    boot = bootstrap_aucs(y, {"a": s[0], "b": s[1]}, n=400, seed=1)
    for k in boot:
        lo, hi = percentile_ci(boot[k])
        assert lo < auc(y, s[0 if k == "a" else 1]) < hi
    width = lambda v: np.subtract(*percentile_ci(v)[::-1])  # noqa: E731
    assert width(boot["a"] - boot["b"]) < 0.5 * width(boot["a"])
    # (S, N) rows: the resample value is the mean AUC over the rows
    both = bootstrap_aucs(y, {"ab": s}, n=400, seed=1)["ab"]
    np.testing.assert_allclose(both, (boot["a"] + boot["b"]) / 2)
