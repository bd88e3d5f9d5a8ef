"""Unlearning objectives as functions of logits and hidden states.

Notation: x a question (and image), y its answer of |y| tokens,
log p(y|x) = sum_t log p(y_t | x, y_<t) over answer tokens (labels != -100).
Formulas as in MLLMU-Bench / open-unlearning:

- NLL:        mean over answer tokens of -log p(y_t | ...)
- GA:         -NLL(forget)
- GradDiff:   -NLL(forget) + alpha * NLL(retain)
- KL-min:     -NLL(forget) + alpha * KL(p_ref || p_theta) on retain answer tokens
- NPO:        (2/beta) * mean_i -log sigmoid(-beta (log p_theta(y|x) - log p_ref(y|x)))
              (Zhang et al. 2024), + alpha * NLL(retain)
- SimNPO:     (2/beta) * mean_i -log sigmoid(-beta log p_theta(y|x) / |y| - delta)
              (Fan et al. 2024), + alpha * NLL(retain)
- RMU:        mean ||h_l(forget) - c u||^2 + alpha * mean ||h_l(retain) - h_l^ref(retain)||^2
              (Li et al. 2024, WMDP), u a fixed random unit vector, h_l a middle layer's output
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def token_mean(total: torch.Tensor, count: torch.Tensor, ddp: bool = False) -> torch.Tensor:
    """``total / count``: a sum over tokens divided by their number.

    With ``ddp`` (inside a training step) and W > 1 processes, each holding its share
    of the global batch, it returns ``W * total / count_all`` with ``count_all`` the
    token count summed over the processes: DDP averages the W gradients, and
    ``(1/W) sum_r W g_r / count_all`` is the gradient of the global token mean, the
    one process's loss. A plain ``total / count`` per process would weight each
    process's tokens by the inverse of its own count instead. One process: unchanged.
    """
    if ddp and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = count.detach().clone()
        dist.all_reduce(count)  # a sum; the count carries no gradient
        return total * dist.get_world_size() / count.clamp(min=1)
    return total / count.clamp(min=1)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the labels, shifted for next-token prediction.

    Args:
        logits: ``(B, T, V)``.
        labels: ``(B, T)`` with -100 where no loss is taken.

    Returns:
        ``(logp, mask)``, both ``(B, T-1)``; ``logp`` is 0 where ``mask`` is 0.
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    logp = (
        torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    )
    return logp * mask, mask


def sequence_logprob(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(y|x), |y|)`` per sample, each ``(B,)``."""
    logp, mask = token_logprobs(logits, labels)
    return logp.sum(-1), mask.sum(-1)


def nll(logits: torch.Tensor, labels: torch.Tensor, ddp: bool = False) -> torch.Tensor:
    """Mean negative log-likelihood over all answer tokens of the batch (a scalar).

    ``ddp``: the mean is over the global batch's tokens (see :func:`token_mean`).
    """
    logp, mask = token_logprobs(logits, labels)
    return token_mean(-logp.sum(), mask.sum(), ddp)


def npo_loss(logp_theta: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO forget loss: ``(2/beta) mean -log sigmoid(-beta (logp_theta - logp_ref))``; inputs ``(B,)``."""
    return (-F.logsigmoid(-beta * (logp_theta - logp_ref))).mean() * 2.0 / beta


def simnpo_loss(
    logp_theta: torch.Tensor, length: torch.Tensor, beta: float, delta: float
) -> torch.Tensor:
    """SimNPO forget loss: ``(2/beta) mean -log sigmoid(-beta logp/|y| - delta)``; inputs ``(B,)``."""
    avg = logp_theta / length.clamp(min=1)
    return (-F.logsigmoid(-beta * avg - delta)).mean() * 2.0 / beta


def kl_ref_theta(
    logits_ref: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, ddp: bool = False
) -> torch.Tensor:
    """KL(p_ref || p_theta) of the next-token distributions, averaged over answer tokens.

    Args:
        logits_ref, logits: ``(B, T, V)`` from the frozen reference and the trained model.
        labels: ``(B, T)``; positions whose (shifted) label is -100 are ignored.
        ddp: average over the global batch's tokens (see :func:`token_mean`).
    """
    mask = labels[:, 1:] != -100
    lp_ref = torch.log_softmax(logits_ref[:, :-1].float(), -1)
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    kl = (lp_ref.exp() * (lp_ref - lp)).sum(-1)  # (B, T-1)
    return token_mean((kl * mask).sum(), mask.sum(), ddp)


def masked_mse(
    h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, ddp: bool = False
) -> torch.Tensor:
    """Mean over unmasked positions of the mean squared error over features; ``h`` (B, T, D).

    ``ddp``: the mean is over the global batch's positions (see :func:`token_mean`).
    """
    err = (h.float() - target.float()).pow(2).mean(-1)  # (B, T)
    mask = mask.to(err.dtype)
    return token_mean((err * mask).sum(), mask.sum(), ddp)


def rmu_loss(
    h_forget: torch.Tensor,
    forget_mask: torch.Tensor,
    control: torch.Tensor,
    h_retain: torch.Tensor,
    h_retain_ref: torch.Tensor,
    retain_mask: torch.Tensor,
    alpha: float,
    ddp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RMU: ``(total, forget_term, retain_term)``; ``control`` is ``c * u`` of shape ``(D,)``."""
    forget = masked_mse(h_forget, control.expand_as(h_forget), forget_mask, ddp)
    retain = masked_mse(h_retain, h_retain_ref, retain_mask, ddp)
    return forget + alpha * retain, forget, retain
