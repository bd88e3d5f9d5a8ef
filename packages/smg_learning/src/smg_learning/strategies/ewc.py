"""``ewc``: elastic weight consolidation with a diagonal Fisher (Kirkpatrick et al., PNAS 2017)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from smg_learning.distributed import unwrap
from smg_learning.segmenter import SegLoss
from smg_learning.strategies.base import STRATEGIES, RunContext, Strategy


class EWCPenalty:
    """``λ/2 Σ_i F_i (θ_i - θ*_i)²`` with the Fisher summed over finished sites (Kirkpatrick 2017)."""

    def __init__(self) -> None:
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def update(
        self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], loss_fn
    ) -> None:
        """Add this site's empirical diagonal Fisher and anchor at the current weights."""
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach() ** 2 / len(batches)
        model.zero_grad(set_to_none=True)
        for n in params:
            self.fisher[n] = self.fisher.get(n, 0) + fisher[n]
            self.anchor[n] = params[n].detach().clone()

    def __call__(self, model: nn.Module) -> torch.Tensor:
        if not self.fisher:
            return torch.zeros(())
        return sum(
            (self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
            for n, p in model.named_parameters()
            if n in self.fisher
        )


@STRATEGIES.register("ewc")
class EWC(Strategy):
    name = "ewc"
    description = "elastic weight consolidation (diagonal Fisher)"

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self.penalty = EWCPenalty()

    def regularise(self, model, x, logits, loss, logs: dict[str, Any]) -> torch.Tensor:
        # parameter names of the unwrapped module: a DDP wrapper prefixes them "module."
        pen = self.penalty(unwrap(model))
        logs["ewc"] = pen.detach()
        return loss + self.cfg.ewc_lambda / 2 * pen

    def end_stage(self, t: int, model: nn.Module) -> None:
        """Add the Fisher of ``cfg.ewc_batches`` random batches of site ``t``."""
        cfg, seed = self.cfg, self.run.seed
        part = self.run.data.parts["train"][self.run.data.sites[t]]
        g = torch.Generator().manual_seed(seed + t)
        dev = next(model.parameters()).device
        batches = []
        for _ in range(cfg.ewc_batches):
            idx = torch.randint(0, len(part), (min(cfg.batch_size, len(part)),), generator=g)
            batches.append((part.images[idx].to(dev), part.masks[idx].to(dev)))
        self.penalty.update(model, batches, SegLoss(cfg.dice_weight))
