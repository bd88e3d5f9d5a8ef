"""The continual strategies, each a step function for :class:`medcommon.train.Trainer`.

A strategy is a small record (:class:`Strategy`) in the ``STRATEGIES`` registry:
where its replay comes from (none, stored real slices, or SMD samples), which
objective its step minimises (plain Dice+CE, EWC, LwF, or PGA), and whether each
stage trains on every site seen so far (``joint``). Adding one is a registry line
plus, for a new objective, a branch in :func:`make_step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from medcommon.registry import Registry
from smg_learning.config import SMGConfig
from smg_learning.pga import pga_objective, shift_domain, split_domains
from smg_learning.segmenter import SegLoss


@dataclass(frozen=True)
class Strategy:
    """How a continual method trains each site's stage."""

    name: str
    description: str
    replay: Literal["none", "real", "smd"] = "none"
    objective: Literal["plain", "pga", "ewc", "lwf"] = "plain"
    cumulative: bool = False


STRATEGIES: Registry[Strategy] = Registry("method")

for _s in (
    Strategy("finetune", "sequential fine-tuning, no protection against forgetting"),
    Strategy("joint", "each stage trains on all sites seen so far (upper bound)", cumulative=True),
    Strategy("ewc", "elastic weight consolidation (diagonal Fisher)", objective="ewc"),
    Strategy("lwf", "learning without forgetting (distil the previous model)", objective="lwf"),
    Strategy(
        "replay-real", "replay of stored real slices (privacy-violating oracle)", replay="real"
    ),
    Strategy("smd-replay", "replay of SMD-generated slices, plain loss", replay="smd"),
    Strategy("pga-real", "PGA with real replay", replay="real", objective="pga"),
    Strategy("smg", "SMG-Learning: PGA with SMD replay", replay="smd", objective="pga"),
):
    STRATEGIES.register(_s.name)(_s)


@dataclass
class ReplayMemory:
    """Replay slices of previous sites: images (M, C, S, S), masks (M, 1, S, S), sites (M,)."""

    images: torch.Tensor
    masks: torch.Tensor
    sites: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, len(self), (n,), generator=generator)
        return self.images[idx], self.masks[idx], self.sites[idx]


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


def step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    """The replay/shift RNG of one step: a pure function of (seed, stage, step), so resume is exact."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 10_007 + step)


def make_step(
    strategy: Strategy,
    cfg: SMGConfig,
    *,
    seed: int,
    stage: int,
    memory: ReplayMemory | None = None,
    ewc: EWCPenalty | None = None,
    teacher: nn.Module | None = None,
):
    """The ``step_fn(model, batch, ctx)`` of one stage of ``strategy``."""
    loss_fn = SegLoss(cfg.dice_weight)

    def step(model: nn.Module, batch: dict[str, torch.Tensor], ctx: Any) -> dict[str, Any]:
        x, y = batch["image"], batch["mask"]
        gen = step_generator(seed, stage, ctx.step)
        replay = None
        if memory is not None and len(memory):
            rx, ry, rs = memory.sample(cfg.replay_batch, gen)
            replay = (rx.to(x.device), ry.to(x.device), rs)
        if strategy.objective == "pga":
            domains = [(x, y)]
            if replay is not None:
                for s in torch.unique(replay[2]).tolist():
                    keep = (replay[2] == s).to(x.device)
                    domains.append((replay[0][keep], replay[1][keep]))
            for _ in range(cfg.pga.shifted_copies):
                domains.append((shift_domain(x, gen, cfg.pga.shift_strength), y))
            out = pga_objective(
                model,
                loss_fn,
                domains,
                meta_test=split_domains(len(domains), cfg.pga.meta_test_domains, gen),
                replay=None if replay is None else replay[:2],
                inner_lr=cfg.pga.inner_lr,
                beta_mem=cfg.pga.beta_mem,
                beta_gen=cfg.pga.beta_gen,
                order=cfg.pga.order,
            )
            return out
        if replay is not None:
            x, y = torch.cat([x, replay[0]]), torch.cat([y, replay[1]])
        logits = model(x)
        loss = loss_fn(logits, y)
        logs: dict[str, Any] = {"seg": loss.detach()}
        if strategy.objective == "ewc" and ewc is not None:
            pen = ewc(model)
            loss = loss + cfg.ewc_lambda / 2 * pen
            logs["ewc"] = pen.detach()
        if strategy.objective == "lwf" and teacher is not None:
            with torch.no_grad():
                soft = F.softmax(teacher(x) / cfg.lwf_temperature, dim=1)
            kd = F.kl_div(
                F.log_softmax(logits / cfg.lwf_temperature, dim=1), soft, reduction="batchmean"
            ) / (x.shape[-1] * x.shape[-2])
            loss = loss + cfg.lwf_alpha * cfg.lwf_temperature**2 * kd
            logs["kd"] = kd.detach()
        logs["loss"] = loss
        return logs

    return step
