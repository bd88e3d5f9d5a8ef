"""Binary and multi-class classification metrics, computed from first principles.

AUC is the Mann-Whitney statistic (ties count one half); AP is the step-wise
area under the precision-recall curve as in scikit-learn. Tests check both
against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medcommon.errors import InputError

ArrayLike = Sequence | np.ndarray


def _as_1d(name: str, values: ArrayLike) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputError(name, f"expected a 1-D array, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise InputError(name, "contains NaN or infinite values")
    return arr


def _check_binary(y_true: np.ndarray) -> np.ndarray:
    labels = set(np.unique(y_true).tolist())
    if not labels <= {0, 1}:
        raise InputError("y_true", f"expected binary labels 0/1, got {sorted(labels)}")
    return y_true.astype(np.int64)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of predictions equal to the label (any number of classes)."""
    t, p = _as_1d("y_true", y_true), _as_1d("y_pred", y_pred)
    if t.size == 0:
        return float("nan")
    return float(np.mean(t == p))


def binary_confusion(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[int, int, int, int]:
    """Return ``(tp, fp, tn, fn)`` for binary labels and predictions (positive = 1)."""
    t = _check_binary(_as_1d("y_true", y_true))
    p = _as_1d("y_pred", y_pred).astype(np.int64)
    tp = int(np.sum((t == 1) & (p == 1)))
    fp = int(np.sum((t == 0) & (p == 1)))
    tn = int(np.sum((t == 0) & (p == 0)))
    fn = int(np.sum((t == 1) & (p == 0)))
    return tp, fp, tn, fn


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def sensitivity(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Recall of the positive class: TP / (TP + FN)."""
    tp, _, _, fn = binary_confusion(y_true, y_pred)
    return _ratio(tp, tp + fn)


def specificity(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Recall of the negative class: TN / (TN + FP)."""
    _, fp, tn, _ = binary_confusion(y_true, y_pred)
    return _ratio(tn, tn + fp)


def f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Harmonic mean of precision and recall of the positive class; 0 when both are 0."""
    tp, fp, _, fn = binary_confusion(y_true, y_pred)
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else 0.0


def auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2.

    Returns NaN when only one class is present (AUC is undefined there).
    """
    t = _check_binary(_as_1d("y_true", y_true))
    s = _as_1d("y_score", y_score).astype(np.float64)
    if t.shape != s.shape:
        raise InputError("y_score", f"length {s.size} differs from y_true length {t.size}")
    n_pos, n_neg = int(t.sum()), int((1 - t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Average ranks handle ties: the rank-sum form of the Mann-Whitney U statistic.
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < s.size:
        j = i
        while j + 1 < s.size and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    u = ranks[t == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def ap(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) * P_n (no interpolation)."""
    t = _check_binary(_as_1d("y_true", y_true))
    s = _as_1d("y_score", y_score).astype(np.float64)
    n_pos = int(t.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    # Evaluate only at the last index of each distinct score (thresholds).
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1]
    tps = np.cumsum(t_sorted)[distinct]
    fps = (distinct + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / n_pos
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def youden_threshold(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """The score threshold maximising Youden's J = TPR - FPR (predict positive if score > thr).

    The sweep is scikit-learn's ``roc_curve``: one operating point per distinct score
    (positive = score >= that score) plus "nothing positive"; the first maximum of
    ``tpr - fpr`` in order of decreasing threshold wins, so ties in J resolve to the
    highest threshold, as ``thr[argmax(tpr - fpr)]`` does. Equal scores always fall on
    the same side. The returned value is the midpoint between the chosen score and the
    next lower distinct score (``min - 1`` below the minimum, ``max + 1`` for "nothing
    positive"), so ``score > thr`` reproduces ``score >= roc_curve threshold`` exactly.

    O(N log N) time and O(N) memory: one sort, then cumulative counts per distinct
    score (Fawcett 2006, "An introduction to ROC analysis", Algorithm 1).
    """
    t = _check_binary(_as_1d("y_true", y_true))
    s = _as_1d("y_score", y_score).astype(np.float64)
    if t.shape != s.shape:
        raise InputError("y_score", f"length {s.size} differs from y_true length {t.size}")
    n_pos, n_neg = int(t.sum()), int((1 - t).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError("y_true", "Youden threshold needs both classes present")
    uniq, inverse = np.unique(s, return_inverse=True)  # ascending distinct scores
    # Operating point k (k = 0..U-1): positive iff score >= uniq[k]; counts are suffix sums.
    tps = np.cumsum(np.bincount(inverse, weights=t, minlength=uniq.size)[::-1])[::-1]
    fps = np.cumsum(np.bincount(inverse, weights=1 - t, minlength=uniq.size)[::-1])[::-1]
    # Decreasing threshold order as roc_curve: "nothing positive" (J = 0) first.
    j = np.r_[0.0, (tps / n_pos - fps / n_neg)[::-1]]
    best = int(np.argmax(j))  # first maximum = highest threshold among ties
    if best == 0:
        return float(uniq[-1] + 1.0)
    k = uniq.size - best  # index into uniq of the lowest positive score
    if k == 0:
        return float(uniq[0] - 1.0)
    lo, hi = uniq[k - 1], uniq[k]
    mid = (lo + hi) / 2.0
    # Adjacent floats: the midpoint may round onto hi; lo itself separates them exactly.
    return float(mid if lo <= mid < hi else lo)


def bias_aucs(y_true: ArrayLike, y_score: ArrayLike, bias: ArrayLike) -> dict[str, float]:
    """AUC overall, on bias-aligned samples (label == bias), on bias-conflicting ones, and their mean.

    Following Luo et al. (MICCAI 2022), ``auc_balanced`` is the mean of the
    aligned and conflicting AUCs.
    """
    t = _check_binary(_as_1d("y_true", y_true))
    s = _as_1d("y_score", y_score)
    b = _as_1d("bias", bias).astype(np.int64)
    if not (t.size == s.size == b.size):
        raise InputError("bias", "y_true, y_score and bias differ in length")
    aligned = t == b
    out = {
        "auc": auc(t, s),
        "auc_aligned": auc(t[aligned], s[aligned]),
        "auc_conflicting": auc(t[~aligned], s[~aligned]),
    }
    out["auc_balanced"] = (out["auc_aligned"] + out["auc_conflicting"]) / 2.0
    return out


def group_accuracy(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike) -> dict[str, float]:
    """Accuracy within each group, plus ``worst`` (minimum) and ``mean`` over groups.

    Keys are ``str(group)`` for each distinct group value, then ``"worst"`` and ``"mean"``.
    """
    t, p = _as_1d("y_true", y_true), _as_1d("y_pred", y_pred)
    g = np.asarray(groups)
    if g.shape[0] != t.size or p.size != t.size:
        raise InputError("groups", "y_true, y_pred and groups differ in length")
    out: dict[str, float] = {}
    for key in sorted(set(map(str, g.tolist()))):
        mask = np.array([str(x) == key for x in g.tolist()])
        out[key] = float(np.mean(t[mask] == p[mask]))
    values = list(out.values())
    out["worst"] = float(min(values)) if values else float("nan")
    out["mean"] = float(np.mean(values)) if values else float("nan")
    return out
