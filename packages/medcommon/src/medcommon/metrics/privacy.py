"""Membership inference: how well a score separates training members from non-members."""

from __future__ import annotations

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
