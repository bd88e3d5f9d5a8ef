"""Gradient difference: ascend on forget, descend on retain (Liu et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from unlearn_bench.losses import nll
from unlearn_bench.methods.base import METHODS, Method, UnlearnConfig, forward_all


@dataclass(frozen=True)
class GradDiffConfig(UnlearnConfig):
    gamma: float = 1.0  # weight of the forget term
    alpha: float = 1.0  # weight of the retain term


@METHODS.register("grad_diff")
class GradDiff(Method):
    """``L = -gamma NLL(forget) + alpha NLL(retain)``."""

    description = "ascend on forget, descend on retain (Liu et al. 2022)"

    config_class = GradDiffConfig
    uses_retain = True

    def loss(self, model, batch, ctx):
        f, r = batch["forget"], batch["retain"]
        out_f, out_r = forward_all(model, f, r)
        forget_nll = nll(out_f.logits, f["labels"], ddp=True)
        retain_nll = nll(out_r.logits, r["labels"], ddp=True)
        loss = -self.cfg.gamma * forget_nll + self.cfg.alpha * retain_nll
        return {"loss": loss, "forget_nll": forget_nll, "retain_nll": retain_nll}
