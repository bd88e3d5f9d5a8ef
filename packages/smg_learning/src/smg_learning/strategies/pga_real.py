"""``pga-real``: Parallel Gradient Alignment with stored real replay.

:class:`PGAStep` is the PGA step shared with ``smg``. Under DDP each process holds a
contiguous share of the site batch (and of its shifted copies) and the whole replay
batch (drawn identically everywhere). PGA's virtual-step gradients come from
``torch.autograd.grad`` on the unwrapped model, which DDP does not synchronise, so
they are averaged over processes explicitly (:mod:`smg_learning.distributed`), and
so is the final gradient; the domain losses are weighted by their global sample
counts. Two processes then take the single-process step at the same global batch.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from medcommon.errors import Diverged
from smg_learning.distributed import mean_over_processes, synced_loss, unwrap
from smg_learning.pga import adam_second_moment, pga_objective, shift_domain, split_domains
from smg_learning.strategies.base import STRATEGIES, step_generator
from smg_learning.strategies.replay_real import RealReplay
from smg_learning.transfer import shift_transfer

#: the losses of a PGA step at a virtual point θ' = θ - α d(g), and those at θ
VIRTUAL_LOSSES, THETA_LOSSES = ("l_mem", "l_gen"), ("l_cur", "l_mtr")


def check_virtual_step(out: dict[str, Any], ctx: Any, inner_lr: float, stage: str) -> None:
    """Raise :class:`~medcommon.errors.Diverged` (on every process) when a loss at PGA's
    virtual point is not finite or exceeds the Trainer's ``max_loss_growth`` times the
    step's losses at θ (at least 1).

    The Trainer bounds the step's loss by its *first* value; a virtual step that is too
    long (``pga.inner_lr``) blows the virtual losses up from the first step on, so its
    bound never fires while the meta-gradients are garbage. Near θ the virtual losses
    are the losses at θ to first order, so a factor of ``max_loss_growth`` (1e4 by
    default; None: the non-finite check only) separates a blow-up from any sane step.
    """
    growth = getattr(getattr(ctx, "config", None), "max_loss_growth", None)
    base = max([1.0, *(abs(float(out[k])) for k in THETA_LOSSES if k in out)])
    worst = None
    for name in VIRTUAL_LOSSES:
        if name not in out:
            continue
        value = float(out[name])
        if not math.isfinite(value) or (growth is not None and abs(value) > growth * base):
            worst = (name, value)
            break
    bad = worst is not None
    world = ctx.accelerator.num_processes
    if world > 1:  # every process raises, so none waits in a collective
        flag = torch.tensor([float(bad)], device=ctx.accelerator.device)
        bad = bool(ctx.accelerator.reduce(flag, reduction="sum").item() > 0)
    if not bad:
        return
    where = f"at step {ctx.step + 1} in stage {stage}"
    if worst is None:
        what = f"another process's PGA virtual step blew up {where}"
    else:
        name, value = worst
        what = f"PGA's virtual step (pga.inner_lr={inner_lr:g}) gave {name} = {value:.4g} {where}"
        if math.isfinite(value):
            what += f", more than {growth:g} x the loss at θ ({base:.4g})"
    raise Diverged(
        what,
        "lower pga.inner_lr (--set pga.inner_lr=...) or use --set pga.virtual_step=normalized",
    )


class PGAStep:
    """Mixin: the step minimises the PGA objective over the current, replayed and shifted domains.

    With ``pga.measure`` each step logs ``align_share`` (the alignment part's norm over
    the update's, :func:`smg_learning.pga.pga_gradient`), also kept per stage
    (:meth:`Strategy.record`) for ``metrics.json``. ``pga.virtual_step="adam"`` reads
    the second moment of the stage's optimiser (:attr:`Strategy.optimizer`). A virtual
    step that blows the losses up is a divergence (:func:`check_virtual_step`).
    """

    uses_pga = True

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: Any) -> dict[str, Any]:
        cfg = self.cfg
        net = unwrap(model)
        rank, world = ctx.accelerator.process_index, ctx.accelerator.num_processes
        x, y = batch["image"], batch["mask"]
        self.probe(model, ctx)
        gen = step_generator(self.run.seed, self.stage, ctx.step)
        replay = self.sample_replay(gen, x.device)
        domains = [(x, y)]
        sizes = [len(x) * world]  # global samples of each domain: the processes' shares
        if replay is not None:
            for s in torch.unique(replay[2]).tolist():
                keep = (replay[2] == s).to(x.device)
                domains.append((replay[0][keep], replay[1][keep]))
                sizes.append(int(keep.sum()))  # the whole replay is on every process
        for _ in range(cfg.pga.shifted_copies):
            if cfg.pga.shift == "transfer":  # a curve of synth's "curves" family (issue #22)
                moved = shift_transfer(x, gen, share=(rank, world))
            else:
                moved = shift_domain(x, gen, cfg.pga.shift_strength, share=(rank, world))
            domains.append((moved, y))
            sizes.append(len(x) * world)
        exact = cfg.pga.estimator == "exact"
        params = [p for p in net.parameters() if p.requires_grad]
        out = pga_objective(
            net,
            self.loss_fn,
            domains,
            meta_test=split_domains(len(domains), cfg.pga.meta_test_domains, gen),
            replay=None if replay is None else replay[:2],
            options=cfg.pga,
            second_moment=adam_second_moment(self.optimizer, params)
            if cfg.pga.virtual_step == "adam"
            else None,
            sizes=None if world == 1 else sizes,
            reduce=None
            if world == 1
            else functools.partial(mean_over_processes, differentiable=exact),
        )
        check_virtual_step(out, ctx, cfg.pga.inner_lr, f"site-{self.run.data.sites[self.stage]}")
        if "align_share" in out:
            self.record("align_share", out["align_share"])
        if world > 1:
            # the forward passes went through the unwrapped model: DDP will not average
            out["loss"] = synced_loss(out["loss"], params)
        return out


@STRATEGIES.register("pga-real")
class PGAReal(PGAStep, RealReplay):
    name = "pga-real"
    description = "PGA with real replay"
