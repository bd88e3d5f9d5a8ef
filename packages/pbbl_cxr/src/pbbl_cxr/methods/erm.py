"""``erm``: cross-entropy on the labels."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pbbl_cxr.methods.base import MethodOutput, RunContext, register_method, run_single


def erm_step(model: torch.nn.Module, batch: dict, ctx: Any) -> torch.Tensor:
    """Cross-entropy on the labels."""
    return F.cross_entropy(model(batch["image"]), batch["label"])


@register_method("erm", description="cross-entropy")
def run_erm(ctx: RunContext) -> MethodOutput:
    return run_single(ctx, erm_step)
