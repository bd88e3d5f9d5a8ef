"""``gce``: the biased model alone, GCE (Zhang & Sabuncu 2018) on the labels, final weights kept.

:func:`make_gce_step` is also PBBL's stage-1 step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from pbbl_cxr.losses import gce_loss
from pbbl_cxr.methods.base import (
    MethodOutput,
    RunContext,
    fresh_model,
    register_method,
    run_stage,
)


def make_gce_step(q: float, target_key: str = "bias_hat") -> Callable:
    """GCE on ``batch[target_key]`` (stage 1: the previous round's labels; round 1: the targets)."""

    def gce_step(model: torch.nn.Module, batch: dict, ctx: Any) -> torch.Tensor:
        return gce_loss(model(batch["image"]), batch[target_key], q).mean()

    return gce_step


@register_method("gce", description="the GCE-trained biased model alone (final weights)")
def run_gce(ctx: RunContext) -> MethodOutput:
    train = ctx.train_set.with_bias_hat(ctx.train_set.labels)
    t0 = time.perf_counter()
    res = run_stage(
        ctx,
        fresh_model(ctx),
        train,
        make_gce_step(ctx.cfg.gce_q),
        steps=ctx.cfg.bias_steps,
        select=False,
    )
    return MethodOutput(
        res.model,
        time.perf_counter() - t0,
        res.valid_metrics,
        {"seconds_per_step": res.seconds_per_step},
    )
