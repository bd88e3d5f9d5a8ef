"""KL minimisation: ascend on forget, stay close to the vanilla model on retain (MLLMU-Bench).

MLLMU-Bench's KL_Min.py also descends on the retain answers: its retain loss is
``NLL(retain) + KL``. ``kl_retain_nll`` is the weight of that NLL term (0, the default,
keeps the KL-only objective; 1 is theirs).
"""

from __future__ import annotations

from dataclasses import dataclass

from unlearn_bench.losses import kl_ref_theta, nll
from unlearn_bench.methods.base import METHODS, Method, UnlearnConfig, forward_all


@dataclass(frozen=True)
class KLMinConfig(UnlearnConfig):
    gamma: float = 1.0  # weight of the forget term
    alpha: float = 1.0  # weight of KL(p_ref || p_theta) on retain
    kl_retain_nll: float = 0.0  # weight of NLL(retain); MLLMU-Bench's KL_Min.py uses 1


@METHODS.register("kl_min")
class KLMin(Method):
    """``L = -gamma NLL(forget) + alpha KL(p_ref || p_theta)[retain] + w NLL(retain)``."""

    description = "ascend on forget, keep KL to the vanilla model small on retain"

    config_class = KLMinConfig
    uses_retain = True
    needs_reference = True

    def loss(self, model, batch, ctx):
        f, r = batch["forget"], batch["retain"]
        out_f, out_r = forward_all(model, f, r)
        forget_nll = nll(out_f.logits, f["labels"], ddp=True)
        kl = kl_ref_theta(self.ref_forward(r).logits, out_r.logits, r["labels"], ddp=True)
        loss = -self.cfg.gamma * forget_nll + self.cfg.alpha * kl
        logs = {"forget_nll": forget_nll, "retain_kl": kl}
        if self.cfg.kl_retain_nll:
            retain_nll = nll(out_r.logits, r["labels"], ddp=True)
            loss = loss + self.cfg.kl_retain_nll * retain_nll
            logs["retain_nll"] = retain_nll
        return {"loss": loss, **logs}
