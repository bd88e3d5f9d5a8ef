"""Pseudo bias labels from the biased model, and the prior ``p(y | b_hat)``.

Luo et al. (2022), Sec. 2.2: the GCE-trained model's prediction is a proxy for the
bias attribute. Binary tasks threshold ``p_b(y=1|x)`` at the Youden point of its ROC
against the targets (``argmax TPR - FPR``); multi-class tasks take the argmax.

Guards added here (issue 10): cross-fitting folds (:func:`fold_ids`), the degenerate
prior check (:func:`prior_check`) and its fallback (:func:`marginal_prior`), and the
pseudo-balanced validation AUC used for selection without bias labels
(:func:`pseudo_balanced_auc`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medcommon.metrics import auc, youden_threshold


def pseudo_bias_labels(
    probs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, float | None]:
    """``probs`` ``(N, C)`` of the biased model -> ``(b_hat (N,), threshold or None)``.

    Binary: ``b_hat = 1[p(y=1|x) > t]`` with ``t`` the Youden threshold of ``p(y=1|x)``
    against ``targets``. Multi-class: ``b_hat = argmax_c p(c|x)``.
    """
    if probs.shape[1] == 2:
        score = probs[:, 1].double().cpu().numpy()
        t = youden_threshold(targets.cpu().numpy(), score)
        return torch.from_numpy((score > t).astype(np.int64)), float(t)
    return probs.argmax(dim=1).long().cpu(), None


def apply_threshold(probs: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Pseudo bias labels of new images with a threshold already chosen on the train set
    (binary: ``1[p(y=1|x) > t]``; ``None``: argmax). The valid split is group-balanced,
    so a Youden threshold refitted there against its labels would not find the bias."""
    if threshold is None:
        return probs.argmax(dim=1).long().cpu()
    return (probs[:, 1].double().cpu() > threshold).long()


def bias_prior(
    bias: torch.Tensor, targets: torch.Tensor, n_bias: int, n_classes: int
) -> torch.Tensor:
    """``P[b, y] = p(y | b)`` counted on the train set, rows normalised; ``(n_bias, n_classes)``.

    A bias value that never occurs gets a uniform row.
    """
    counts = torch.zeros(n_bias, n_classes, dtype=torch.float64)
    counts.index_put_(
        (bias.long().cpu(), targets.long().cpu()),
        torch.ones(bias.numel(), dtype=torch.float64),
        accumulate=True,
    )
    rows = counts.sum(1, keepdim=True)
    uniform = torch.full_like(counts, 1.0 / n_classes)
    return torch.where(rows > 0, counts / rows.clamp_min(1), uniform).float()


def log_prior(prior: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """``log(P + eps)`` as added to the logits (authors' eps = 1e-9)."""
    return torch.log(prior + eps)


def fold_ids(targets: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Cross-fitting folds ``(N,)`` in ``0..k-1``, stratified by target (each class dealt
    round-robin over the folds in a seeded random order), so every fold sees every class."""
    g = torch.Generator().manual_seed(seed)
    t = targets.long().cpu()
    folds = torch.empty_like(t)
    for c in t.unique():
        idx = torch.nonzero(t == c).squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        folds[idx] = torch.arange(idx.numel()) % k
    return folds


def prior_check(
    b_hat: torch.Tensor, targets: torch.Tensor, n_classes: int, min_share: float
) -> dict[str, Any]:
    """Is the prior ``p(y | b_hat)`` degenerate, i.e. did stage 1 hand back the labels?

    The rule looks at the ``(b_hat, y)`` cells, not at the agreement of ``b_hat`` with
    ``y``. A bias proxy fills the bias-conflicting cells of each ``b_hat`` row with the
    conflicting group, ``1 - alignment`` of that row: at least 1 % in every published
    GbP/SbP split and ``demo``/``small``/``full`` benchmark setting (SbP-bias99 with a
    perfect proxy: 5000/50/50/5000, 50 of 5050). A stage 1 that learned the label leaves them holding its own mistakes
    only: empty, or nearly. So a cell is **near-empty** when it is empty or holds less
    than ``min_share`` of its ``b_hat`` row, and the prior is degenerate when any cell is.
    The default ``min_share = 0.002`` is a fifth of the smallest conflicting share of a
    published split: a proxy that misses three in four conflicting images of a 99 %-aligned
    split still passes. A ``b_hat`` value that never occurs (an empty row: ``b_hat``
    constant) counts as empty cells too.

    Returns ``counts`` (``[b][y]``), ``empty_cells`` and ``near_empty_cells`` (``[b, y]``
    pairs), ``min_share`` (the smallest cell share of its row, 0 for an empty row),
    ``agreement`` (share of ``b_hat == y``; logged, not used) and ``degenerate``.
    """
    b, t = b_hat.long().cpu(), targets.long().cpu()
    counts = torch.zeros(n_classes, n_classes, dtype=torch.long)
    counts.index_put_((b, t), torch.ones_like(b), accumulate=True)
    rows = counts.sum(1, keepdim=True)
    share = torch.where(rows > 0, counts.double() / rows.clamp_min(1), torch.zeros(1).double())
    empty = [[int(i), int(j)] for i, j in torch.nonzero(counts == 0).tolist()]
    near = [
        [int(i), int(j)] for i, j in torch.nonzero((counts == 0) | (share < min_share)).tolist()
    ]
    return {
        "agreement": float((b == t).double().mean()),
        "empty_cells": empty,
        "near_empty_cells": near,
        "min_share": float(share.min()),
        "counts": counts.tolist(),
        "degenerate": bool(near),
    }


def marginal_prior(targets: torch.Tensor, n_bias: int, n_classes: int) -> torch.Tensor:
    """Every row the label marginal ``p(y)``: the bias-balanced softmax becomes the
    class-balanced one (plain CE up to a constant logit shift, i.e. ERM-like ranking)."""
    p = torch.bincount(targets.long().cpu(), minlength=n_classes).double()
    return (p / p.sum()).expand(n_bias, n_classes).clone().float()


def pseudo_balanced_auc(labels: torch.Tensor, score: torch.Tensor, b_hat: torch.Tensor) -> float:
    """Mean of the AUCs on ``b_hat == y`` and ``b_hat != y`` (the balanced AUC of
    Luo et al. with pseudo bias groups); a group lacking a class contributes the overall
    AUC instead of NaN, so selection still works when the groups are degenerate."""
    y = labels.cpu().numpy().astype(np.int64)
    s = score.double().cpu().numpy()
    b = b_hat.cpu().numpy().astype(np.int64)
    overall = auc(y, s)
    parts = []
    for mask in (y == b, y != b):
        v = auc(y[mask], s[mask]) if len(np.unique(y[mask])) == 2 else float("nan")
        parts.append(overall if np.isnan(v) else v)
    return float(np.mean(parts))
