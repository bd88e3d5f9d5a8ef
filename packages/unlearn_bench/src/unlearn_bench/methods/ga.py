"""Gradient ascent: maximise the NLL of the forget answers (Thudi et al. 2022)."""

from __future__ import annotations

from unlearn_bench.losses import nll
from unlearn_bench.methods.base import METHODS, Method, UnlearnConfig, forward


@METHODS.register("ga")
class GradientAscent(Method):
    """``L = -NLL(forget)``."""

    description = "gradient ascent on the forget answers (Thudi et al. 2022)"

    config_class = UnlearnConfig

    def loss(self, model, batch, ctx):
        forget_nll = nll(forward(model, batch).logits, batch["labels"], ddp=True)
        return {"loss": -forget_nll, "forget_nll": forget_nll}
