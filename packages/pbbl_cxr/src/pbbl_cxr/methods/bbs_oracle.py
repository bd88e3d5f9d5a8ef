"""``bbs-oracle``: bias-balanced softmax (Hong & Yang 2021) with the true bias labels.

:func:`make_bbs_step` is also PBBL's stage-2 step (with the pseudo bias labels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pbbl_cxr.losses import bias_balanced_ce
from pbbl_cxr.methods.base import MethodOutput, RunContext, n_bias, register_method, run_single
from pbbl_cxr.pseudo import bias_prior, log_prior


def make_bbs_step(log_p: torch.Tensor, bias_key: str) -> Callable:
    """Bias-balanced softmax ``CE(z + log P[b], y)`` with ``b = batch[bias_key]``."""

    def bbs_step(model: torch.nn.Module, batch: dict, ctx: Any) -> torch.Tensor:
        logits = model(batch["image"])
        return bias_balanced_ce(logits, batch["label"], batch[bias_key], log_p.to(logits.device))

    return bbs_step


@register_method(
    "bbs-oracle", needs_bias=True, description="bias-balanced softmax, true bias labels"
)
def run_bbs_oracle(ctx: RunContext) -> MethodOutput:
    c = ctx.cfg.model.num_classes
    prior = bias_prior(ctx.train_set.bias, ctx.train_set.labels, n_bias(ctx), c)
    out = run_single(ctx, make_bbs_step(log_prior(prior, ctx.cfg.prior_eps), "bias"))
    out.info["prior"] = prior.tolist()
    return out
