"""Bootstrap confidence intervals for AUCs and their paired differences.

Cases are resampled with replacement, within each class (stratified), so every
resample keeps the class counts of the data and its AUC is always defined. The
same resamples serve every score vector, which makes differences *paired*: the
interval of ``AUC(a) - AUC(b)`` reflects only how a and b disagree on the same
cases (Efron & Tibshirani 1993, ch. 13; percentile intervals).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

from medcommon.errors import InputError


def stratified_resamples(y: ArrayLike, n: int = 1000, seed: int = 0) -> np.ndarray:
    """``(n, N)`` case indices: each row resamples the positives and negatives of ``y``."""
    y = np.asarray(y).astype(int)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if pos.size == 0 or neg.size == 0:
        raise InputError("y", "bootstrap of an AUC needs both classes")
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(pos, (n, pos.size)), rng.choice(neg, (n, neg.size))], axis=1)


def auc_rows(y: ArrayLike, scores: np.ndarray) -> np.ndarray:
    """AUC of each row of ``scores`` ``(R, N)`` against labels ``y`` ``(N,)`` (ties 1/2)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    ranks = rankdata(np.asarray(scores, dtype=np.float64), axis=1)
    u = ranks[:, y].sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def bootstrap_aucs(
    y: ArrayLike, scores: Mapping[str, np.ndarray], n: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Per key, the AUC on each of ``n`` shared stratified resamples: ``{key: (n,)}``.

    ``scores[key]`` is ``(N,)`` or ``(S, N)`` (e.g. one row per training seed); with
    rows, each resample's value is the mean of the rows' AUCs, so the interval is that
    of the seed-averaged AUC.
    """
    y = np.asarray(y).astype(int)
    idx = stratified_resamples(y, n, seed)
    y_b = y[idx[0]]  # stratified: every resample has the same label vector, in this order
    out = {}
    for key, s in scores.items():
        s = np.atleast_2d(np.asarray(s, dtype=np.float64))
        if s.shape[1] != y.size:
            raise InputError(key, f"{s.shape[1]} scores for {y.size} labels")
        out[key] = np.mean([auc_rows(y_b, row[idx]) for row in s], axis=0)
    return out


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``values``."""
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(values, dtype=float), [a, 1.0 - a])
    return float(lo), float(hi)
