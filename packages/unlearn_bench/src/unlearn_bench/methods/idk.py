"""IDK tuning: train the forget questions toward "I don't know"-style answers, keep retain."""

from __future__ import annotations

from dataclasses import dataclass

from unlearn_bench.data import idk_answer
from unlearn_bench.losses import nll
from unlearn_bench.methods.base import METHODS, Method, UnlearnConfig, forward_all


@dataclass(frozen=True)
class IDKConfig(UnlearnConfig):
    alpha: float = 1.0  # weight of NLL(retain)


@METHODS.register("idk")
class IDK(Method):
    """``L = NLL(forget question -> IDK answer) + alpha NLL(retain)``."""

    description = "train forget questions toward I-don't-know answers, keep retain (IDK tuning)"

    config_class = IDKConfig
    uses_retain = True

    def forget_answer(self, item):
        return idk_answer(item["id"])

    def loss(self, model, batch, ctx):
        f, r = batch["forget"], batch["retain"]
        out_f, out_r = forward_all(model, f, r)
        idk_nll = nll(out_f.logits, f["labels"], ddp=True)
        retain_nll = nll(out_r.logits, r["labels"], ddp=True)
        return {
            "loss": idk_nll + self.cfg.alpha * retain_nll,
            "idk_nll": idk_nll,
            "retain_nll": retain_nll,
        }
