"""SimNPO: reference-free, length-normalised NPO (Fan et al. 2024), with a retain NLL term."""

from __future__ import annotations

from dataclasses import dataclass

from unlearn_bench.losses import nll, sequence_logprob, simnpo_loss
from unlearn_bench.methods.base import METHODS, Method, UnlearnConfig, forward_all


@dataclass(frozen=True)
class SimNPOConfig(UnlearnConfig):
    beta: float = 2.5
    delta: float = 0.0  # reward margin
    alpha: float = 1.0  # weight of NLL(retain)


@METHODS.register("simnpo")
class SimNPO(Method):
    """``L = (2/beta) mean -log sigmoid(-beta log p_theta(y|x)/|y| - delta) [forget] + alpha NLL(retain)``."""

    description = "reference-free, length-normalised NPO (Fan et al. 2024)"

    config_class = SimNPOConfig
    uses_retain = True

    def loss(self, model, batch, ctx):
        f, r = batch["forget"], batch["retain"]
        # one model call for both batches (DDP); no retain forward when alpha = 0
        outs = forward_all(model, f, r) if self.cfg.alpha else forward_all(model, f)
        lp, n = sequence_logprob(outs[0].logits, f["labels"])
        forget = simnpo_loss(lp, n, self.cfg.beta, self.cfg.delta)
        retain_nll = (
            nll(outs[1].logits, r["labels"], ddp=True) if self.cfg.alpha else lp.new_zeros(())
        )
        return {
            "loss": forget + self.cfg.alpha * retain_nll,
            "simnpo": forget,
            "retain_nll": retain_nll,
        }
