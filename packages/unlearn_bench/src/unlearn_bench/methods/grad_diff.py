"""Gradient difference: ascend on forget, descend on retain (Liu et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from unlearn_bench.losses import nll
from unlearn_bench.methods.base import METHODS, Method, UnlearnConfig, forward


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
        forget_nll = nll(forward(model, f).logits, f["labels"])
        retain_nll = nll(forward(model, r).logits, r["labels"])
        loss = -self.cfg.gamma * forget_nll + self.cfg.alpha * retain_nll
        return {"loss": loss, "forget_nll": forget_nll, "retain_nll": retain_nll}
