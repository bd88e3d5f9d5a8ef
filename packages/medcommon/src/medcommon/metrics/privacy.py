"""Membership inference: per-sample attack scores and how well they separate members.

Conventions. Every ``*_score`` function returns a number where *higher means
"member"* (a training sample), so :func:`mia_auc` of members against non-members is
the usual ROC AUC (0.5: no leak, 1.0: every member above every non-member). The
attacks follow open-unlearning's definitions (``src/evals/metrics/mia``), which
return the negated quantity ("lower = member"); the negation is the only difference.

:func:`privleak` is MUSE's PrivLeak (Shi et al. 2024, eq. in Sec. 3.3): MUSE reports
the AUC as ``1 - AUC`` of the convention above, so under-unlearning (a model that
still leaks) gives a large *negative* PrivLeak and over-unlearning a large positive one.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from medcommon.metrics.classification import auc


def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """AUC of telling members from non-members, where a higher score means "member".

    Pass e.g. the negative loss or the Min-K% log-probability per sample. 0.5 means
    the attack cannot tell them apart; 1.0 means every member scores above every
    non-member.
    """
    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    y = np.r_[np.ones(m.size, dtype=np.int64), np.zeros(n.size, dtype=np.int64)]
    return auc(y, np.r_[m, n])


def _k_lowest_mean(values: np.ndarray, k: float) -> float:
    """Mean of the ``max(1, int(len * k))`` lowest values (open-unlearning's rounding)."""
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")
    n = max(1, int(values.size * k))
    return float(np.sort(values)[:n].mean())


def min_k_score(token_logprobs: Sequence[float], k: float = 0.4) -> float:
    """Min-K% Prob (Shi et al. 2024): mean of the lowest ``k`` share of token log-probs.

    Args:
        token_logprobs: ``(T,)`` log p(y_t | y_<t) of the scored tokens.
        k: the share of tokens kept (MUSE's PrivLeak uses 0.4).
    """
    lp = np.asarray(token_logprobs, dtype=np.float64)
    if lp.size == 0:
        raise ValueError("no tokens to score")
    return _k_lowest_mean(lp, k)


def min_k_plus_plus_score(
    token_logprobs: Sequence[float],
    mu: Sequence[float],
    var: Sequence[float],
    k: float = 0.4,
) -> float:
    """Min-K%++ (Zhang et al. 2024): Min-K% of log-probs standardised per position.

    Each token's ``log p(y_t)`` is standardised by the mean ``mu_t = E_{z~p}[log p(z)]``
    and variance ``var_t = E_{z~p}[log p(z)^2] - mu_t^2`` of the log-prob under the
    model's own next-token distribution ``p`` at that position; variances are clamped
    at 1e-6 as in open-unlearning.

    Args:
        token_logprobs, mu, var: ``(T,)`` each.
        k: the share of (standardised) tokens kept.
    """
    lp = np.asarray(token_logprobs, dtype=np.float64)
    if lp.size == 0:
        raise ValueError("no tokens to score")
    z = (lp - np.asarray(mu, dtype=np.float64)) / np.sqrt(
        np.maximum(np.asarray(var, dtype=np.float64), 1e-6)
    )
    return _k_lowest_mean(z, k)


def zlib_entropy(text: str) -> int:
    """Bytes of the zlib-compressed UTF-8 text (Carlini et al. 2021's reference entropy)."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_score(mean_nll: float, text: str) -> float:
    """zlib attack (Carlini et al. 2021): ``-(mean token NLL) / zlib_entropy(text)``.

    ``text`` is the scored sequence (the answer). open-unlearning's ``zlib`` score is
    ``loss / zlib_entropy``; negated here so that higher means "member".
    """
    return -float(mean_nll) / max(zlib_entropy(text), 1)


def privleak(auc_model: float, auc_retrain: float) -> float:
    """MUSE's PrivLeak in percent: ``(AUC'_model - AUC'_retrain) / AUC'_retrain * 100``.

    ``auc_*`` are MIA AUCs of forget (members) against holdout in the convention of
    :func:`mia_auc` (higher = more separable); MUSE's AUC' is ``1 - AUC``. Ideal 0;
    under-unlearning (the model still tells forget from holdout) is negative,
    over-unlearning positive. ``nan`` if the retrained model's AUC' is 0.
    """
    model, ref = 1.0 - float(auc_model), 1.0 - float(auc_retrain)
    return (model - ref) / ref * 100.0 if ref != 0 else float("nan")
