"""Negative Preference Optimization (Zhang et al. 2024), with a retain NLL term.

The reference ``p_ref`` is the vanilla model (``npo_reference="vanilla"``, open-unlearning's
choice) or the Llava folder ``npo_reference`` names: MLLMU-Bench's NPO.py takes an
"oracle" model fine-tuned on the retain set (their reference_model_FT.py), e.g. the
``retrain`` run's model here. Their NPO has no retain term: ``alpha=0`` gives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unlearn_bench.losses import nll, npo_loss, sequence_logprob
from unlearn_bench.methods.base import METHODS, Method, UnlearnConfig, forward_all


@dataclass(frozen=True)
class NPOConfig(UnlearnConfig):
    beta: float = 0.1  # the notes give 0.1-0.4
    alpha: float = 1.0  # weight of NLL(retain); 0 gives plain NPO
    npo_reference: str = "vanilla"  # or a Llava folder: MLLMU-Bench's retain-trained oracle
    # "once": log p_ref(y|x) of every forget item computed in one pass before training, and no
    # reference model held while training (issue #24); "model": the reference model is kept
    # and run on every batch (before #24). Equal up to float rounding: the reference is
    # frozen, in eval mode (no dropout), and a right-padded item's log-probability does not
    # depend on its batch.
    reference_logprobs: Literal["once", "model"] = "once"


@METHODS.register("npo")
class NPO(Method):
    """``L = (2/beta) mean -log sigmoid(-beta log(p_theta/p_ref)) [forget] + alpha NLL(retain)``."""

    description = "negative preference optimisation against the vanilla model (Zhang et al. 2024)"

    config_class = NPOConfig
    uses_retain = True
    needs_reference = True

    def holds_reference(self) -> bool:
        return self.cfg.reference_logprobs == "model"

    def loss(self, model, batch, ctx):
        f, r = batch["forget"], batch["retain"]
        # one model call for both batches (DDP); no retain forward when alpha = 0
        outs = forward_all(model, f, r) if self.cfg.alpha else forward_all(model, f)
        lp, _ = sequence_logprob(outs[0].logits, f["labels"])
        if "ref_logprob" in f:  # computed once before training (reference_logprobs="once")
            lp_ref = f["ref_logprob"].to(lp)
        else:
            lp_ref, _ = sequence_logprob(self.ref_forward(f).logits, f["labels"])
        forget = npo_loss(lp, lp_ref, self.cfg.beta)
        retain_nll = (
            nll(outs[1].logits, r["labels"], ddp=True) if self.cfg.alpha else lp.new_zeros(())
        )
        loss = forget + self.cfg.alpha * retain_nll
        return {
            "loss": loss,
            "npo": forget,
            "retain_nll": retain_nll,
            "log_ratio": (lp - lp_ref).mean(),
        }
