"""Losses and per-sample weights of PBBL and its baselines.

- :func:`gce_loss` — generalized cross-entropy (Zhang & Sabuncu 2018) in the form the
  authors' code (and LfF's) uses: ``CE(z, y) * q * p_y^q`` with ``p_y`` detached.
- :func:`bias_balanced_ce` — bias-balanced softmax (Hong & Yang 2021):
  ``CE(z + log p(y | b), y)``; plain logits at test time.
- :class:`LossEMA` and :func:`lff_weights` — Learning from Failure (Nam et al. 2020).
- :class:`GroupDROWeights` — online Group DRO (Sagawa et al. 2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pbbl_cxr.distributed import all_gather_cat, all_reduce_sum, world_size


def gce_loss(logits: torch.Tensor, target: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Per-sample GCE ``CE(z, y) * q * p_y^q`` (``p_y`` detached); logits ``(B, C)`` -> ``(B,)``.

    Its gradient is ``q * p_y^q * dCE``, i.e. ``q`` times the gradient of
    ``(1 - p_y^q) / q``: confident (easy) samples get larger weights, which makes the
    model latch onto the easiest cue, the bias.
    """
    ce = F.cross_entropy(logits, target, reduction="none")
    p_y = torch.softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    return ce * q * p_y.detach() ** q


def bias_balanced_ce(
    logits: torch.Tensor, target: torch.Tensor, bias: torch.Tensor, log_prior: torch.Tensor
) -> torch.Tensor:
    """Mean of ``CE(z + log P[b], y)``; ``log_prior`` is ``(n_bias, C)`` with rows ``log p(y | b)``.

    Logits ``(B, C)``, ``target``/``bias`` ``(B,)``.
    """
    return F.cross_entropy(logits + log_prior[bias], target)


class LossEMA:
    """Per-sample exponential moving average of losses (LfF, alpha = 0.7).

    ``update(loss, index)`` sets ``ema[i] = alpha * ema[i] + (1 - alpha) * loss_i`` and
    returns the updated values; a sample's first update sets ``ema[i] = loss_i``, as
    LfF's own code does (an average started at 0 would under-state every loss for the
    first epochs and so the relative difficulty ``W``). Under DDP each process holds a piece of the global
    batch; the pieces' losses and indices are gathered so that every process updates
    the whole batch's entries, and its table stays the one a single process would have.
    """

    def __init__(self, n: int, alpha: float = 0.7) -> None:
        self.alpha = alpha
        self.values = torch.zeros(n)
        self.updated = torch.zeros(n, dtype=torch.bool)

    def update(self, loss: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if world_size() > 1:
            self._update(all_gather_cat(loss.detach().float()), all_gather_cat(index))
            return self.values[index.cpu()].to(loss.device)
        return self._update(loss, index)

    def _update(self, loss: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        idx = index.cpu()
        loss = loss.detach().float()
        cur = loss.cpu()
        new = torch.where(
            self.updated[idx], self.alpha * self.values[idx] + (1 - self.alpha) * cur, cur
        )
        self.values[idx] = new
        self.updated[idx] = True
        return new.to(loss.device)

    def class_max(self, labels_all: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Maximum EMA within each sample's class (over the whole train set), ``(B,)``."""
        out = torch.empty(label.shape[0])
        lab = label.cpu()
        for c in lab.unique():
            out[lab == c] = self.values[labels_all == c].max().clamp_min(1e-8)
        return out.to(label.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values.clone(), "updated": self.updated.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.values = state["values"].clone()
        # checkpoints written before ``updated`` existed: a non-zero value was updated
        self.updated = state.get("updated", self.values != 0).clone().bool()


def lff_weights(loss_b: torch.Tensor, loss_d: torch.Tensor) -> torch.Tensor:
    """LfF relative difficulty ``W = l_B / (l_B + l_D)`` (``(B,)``, detached, 0 where both are 0)."""
    lb, ld = loss_b.detach(), loss_d.detach()
    return lb / (lb + ld + 1e-8)


class GroupDROWeights:
    """Group weights of online Group DRO: ``q_g <- q_g * exp(eta * L_g)``, then normalised.

    The step's loss is ``sum_g q_g * L_g`` over the groups present in the batch. Under
    DDP, ``L_g`` is the group mean over the *global* batch: per-group sums and counts are
    summed over the processes (the sums differentiably), so ``q`` and the gradient are
    those of one process.
    """

    def __init__(self, n_groups: int, eta: float = 0.01) -> None:
        self.eta = eta
        self.q = torch.full((n_groups,), 1.0 / n_groups)

    def loss(self, per_sample: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        n = self.q.numel()
        counts = torch.bincount(group, minlength=n).float()
        sums = torch.zeros(n, device=per_sample.device).index_add(0, group, per_sample)
        if world_size() > 1:
            counts = all_reduce_sum(counts)
            sums = all_reduce_sum(sums, grad=True)
        present = counts > 0
        group_loss = torch.where(present, sums / counts.clamp_min(1), torch.zeros_like(sums))
        q = self.q.to(per_sample.device)
        q = q * torch.exp(self.eta * group_loss.detach() * present)
        q = q / q.sum()
        self.q = q.detach().cpu()
        return (q * group_loss).sum()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"q": self.q.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.q = state["q"].clone()
