"""``lff``: Learning from Failure (Nam et al. 2020).

A biased network ``f_B`` (GCE) and a debiased one ``f_D`` are trained together;
``f_D``'s per-sample CE is weighted by the relative difficulty
``W = l_B / (l_B + l_D)`` computed from class-normalised per-sample loss EMAs.
Under DDP the EMAs are updated from the whole global batch on every process
(:class:`pbbl_cxr.losses.LossEMA` gathers the pieces), so they match one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from medcommon.train import seed_everything
from pbbl_cxr.losses import LossEMA, gce_loss, lff_weights
from pbbl_cxr.methods.base import MethodOutput, RunContext, register_method, run_stage
from pbbl_cxr.models import BiasedDebiasedPair, build_model


def make_lff_step(q: float, labels_all: torch.Tensor) -> Callable:
    """LfF: ``GCE(f_B) + W * CE(f_D)``, ``W = l_B / (l_B + l_D)`` from class-normalised loss EMAs."""

    def lff_step(model: torch.nn.Module, batch: dict, ctx: Any) -> dict:
        x, y, idx = batch["image"], batch["label"], batch["index"]
        logits_b, logits_d = model(x)  # through the (DDP) wrapper, so both networks sync
        ce_b = F.cross_entropy(logits_b, y, reduction="none").detach()
        ce_d = F.cross_entropy(logits_d, y, reduction="none")
        ema_b, ema_d = ctx.state["ema_b"], ctx.state["ema_d"]
        lb = ema_b.update(ce_b, idx) / ema_b.class_max(labels_all, y)
        ld = ema_d.update(ce_d.detach(), idx) / ema_d.class_max(labels_all, y)
        w = lff_weights(lb, ld)
        loss = gce_loss(logits_b, y, q).mean() + (ce_d * w).mean()
        return {"loss": loss, "lff_weight": w.mean()}

    return lff_step


@register_method("lff", description="Learning from Failure (Nam et al. 2020)")
def run_lff(ctx: RunContext) -> MethodOutput:
    seed_everything(ctx.seed)
    pair = BiasedDebiasedPair(build_model(ctx.cfg.model), build_model(ctx.cfg.model))
    n = len(ctx.train_set)
    state = {"ema_b": LossEMA(n, ctx.cfg.lff_ema), "ema_d": LossEMA(n, ctx.cfg.lff_ema)}
    t0 = time.perf_counter()
    res = run_stage(
        ctx,
        pair,
        ctx.train_set,
        make_lff_step(ctx.cfg.gce_q, ctx.train_set.labels),
        steps=ctx.cfg.steps,
        select=True,
        state=state,
        kept=lambda m: m.debiased,
    )
    return MethodOutput(
        res.model,
        time.perf_counter() - t0,
        res.valid_metrics,
        {"seconds_per_step": res.seconds_per_step, "best_step": res.best_step},
    )
