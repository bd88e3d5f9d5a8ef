"""Pseudo bias labels from the biased model, and the prior ``p(y | b_hat)``.

Luo et al. (2022), Sec. 2.2: the GCE-trained model's prediction is a proxy for the
bias attribute. Binary tasks threshold ``p_b(y=1|x)`` at the Youden point of its ROC
against the targets (``argmax TPR - FPR``); multi-class tasks take the argmax.
"""

from __future__ import annotations

import numpy as np
import torch

from medcommon.metrics import youden_threshold


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
