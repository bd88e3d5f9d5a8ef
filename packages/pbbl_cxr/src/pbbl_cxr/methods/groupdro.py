"""``groupdro``: online Group DRO (Sagawa et al. 2020) over the true (label, bias) groups (oracle).

Under DDP the group losses are summed over the processes
(:class:`pbbl_cxr.losses.GroupDROWeights`), so the weights ``q`` and the loss match one process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from pbbl_cxr.losses import GroupDROWeights
from pbbl_cxr.methods.base import MethodOutput, RunContext, n_bias, register_method, run_single


def make_groupdro_step(n_bias: int) -> Callable:
    """Group DRO over groups ``g = y * n_bias + b``; weights live in ``ctx.state["dro"]``."""

    def groupdro_step(model: torch.nn.Module, batch: dict, ctx: Any) -> dict:
        per_sample = F.cross_entropy(model(batch["image"]), batch["label"], reduction="none")
        group = batch["label"] * n_bias + batch["bias"]
        loss = ctx.state["dro"].loss(per_sample, group)
        return {"loss": loss, "q_max": ctx.state["dro"].q.max()}

    return groupdro_step


@register_method("groupdro", needs_bias=True, description="Group DRO on true (label, bias) groups")
def run_groupdro(ctx: RunContext) -> MethodOutput:
    nb = n_bias(ctx)
    n_groups = ctx.cfg.model.num_classes * nb
    state = {"dro": GroupDROWeights(n_groups, ctx.cfg.groupdro_eta)}
    return run_single(ctx, make_groupdro_step(nb), state=state)
