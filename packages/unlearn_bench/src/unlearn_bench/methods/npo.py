"""Negative Preference Optimization (Zhang et al. 2024), with a retain NLL term."""

from __future__ import annotations

from dataclasses import dataclass

from unlearn_bench.losses import nll, npo_loss, sequence_logprob
from unlearn_bench.methods.base import METHODS, Method, UnlearnConfig, forward


@dataclass(frozen=True)
class NPOConfig(UnlearnConfig):
    beta: float = 0.1  # the notes give 0.1-0.4
    alpha: float = 1.0  # weight of NLL(retain); 0 gives plain NPO


@METHODS.register("npo")
class NPO(Method):
    """``L = (2/beta) mean -log sigmoid(-beta log(p_theta/p_ref)) [forget] + alpha NLL(retain)``."""

    description = "negative preference optimisation against the vanilla model (Zhang et al. 2024)"

    config_class = NPOConfig
    uses_retain = True
    needs_reference = True

    def loss(self, model, batch, ctx):
        f, r = batch["forget"], batch["retain"]
        lp, _ = sequence_logprob(forward(model, f).logits, f["labels"])
        lp_ref, _ = sequence_logprob(self.ref_forward(f).logits, f["labels"])
        forget = npo_loss(lp, lp_ref, self.cfg.beta)
        retain_nll = (
            nll(forward(model, r).logits, r["labels"]) if self.cfg.alpha else lp.new_zeros(())
        )
        loss = forget + self.cfg.alpha * retain_nll
        return {
            "loss": loss,
            "npo": forget,
            "retain_nll": retain_nll,
            "log_ratio": (lp - lp_ref).mean(),
        }
