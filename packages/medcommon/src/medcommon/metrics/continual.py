"""Continual learning across sites: the stage x site matrix and its summaries."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medcommon.errors import InputError


def continual_summary(matrix: Sequence[Sequence[float]] | np.ndarray) -> dict[str, float]:
    """Summarise a stage x site score matrix (e.g. Dice).

    ``matrix[t, j]`` is the score on site ``j`` after training stage ``t``. Rows are
    the T training stages in order; the first T columns are the training sites in
    the same order, any further columns are held-out sites never trained on.

    Returns:
        ``memorizability``: mean of the last row over the T training-site columns.
        ``generalizability``: mean over stages t of the mean over the columns not
        yet trained at stage t (training sites after t, and every held-out site);
        stages with no such column (the last, without held-out sites) are skipped.
        ``bwt``: backward transfer, mean over i < T-1 of ``D[T-1, i] - D[i, i]``
        (negative means forgetting; 0.0 for a single stage).
    """
    d = np.asarray(matrix, dtype=np.float64)
    if d.ndim != 2:
        raise InputError("matrix", f"expected a 2-D stage x site matrix, got shape {d.shape}")
    n_stages, n_cols = d.shape
    if n_stages == 0 or n_cols < n_stages:
        raise InputError(
            "matrix", f"{n_stages} stages need at least as many site columns, got {n_cols}"
        )
    if not np.all(np.isfinite(d)):
        raise InputError("matrix", "contains NaN or infinite values")
    last = n_stages - 1
    memorizability = float(d[last, :n_stages].mean())
    per_stage = [d[t, t + 1 :].mean() for t in range(n_stages) if d[t, t + 1 :].size > 0]
    generalizability = float(np.mean(per_stage)) if per_stage else float("nan")
    bwt = float(np.mean([d[last, i] - d[i, i] for i in range(last)])) if last > 0 else 0.0
    return {"memorizability": memorizability, "generalizability": generalizability, "bwt": bwt}
