"""``pbbl``: pseudo bias-balanced learning (Luo et al. 2022).

Stage 1: ``rounds`` GCE models, each fit on the previous round's labels, give Youden
pseudo bias labels ``b_hat``; the prior ``p(y | b_hat)`` is counted on the train set;
stage 2 trains a fresh model with the bias-balanced softmax on ``b_hat``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from pbbl_cxr.evaluate import predict_probs
from pbbl_cxr.methods.base import (
    MethodOutput,
    RunContext,
    fresh_model,
    log_record,
    register_method,
    run_stage,
)
from pbbl_cxr.methods.bbs_oracle import make_bbs_step
from pbbl_cxr.methods.gce import make_gce_step
from pbbl_cxr.pseudo import bias_prior, log_prior, pseudo_bias_labels


def pseudo_label_rounds(ctx: RunContext) -> tuple[torch.Tensor, list[dict[str, Any]], float]:
    """Stage 1: ``rounds`` GCE models, each fit on the previous round's labels; returns
    ``(b_hat, per-round facts, seconds per GCE step)``."""
    train = ctx.train_set
    b_hat = train.labels.clone()  # round 1 fits the targets
    rounds = []
    sec_per_step = 0.0
    for r in range(1, ctx.cfg.rounds + 1):
        res = run_stage(
            ctx,
            fresh_model(ctx),
            train.with_bias_hat(b_hat),
            make_gce_step(ctx.cfg.gce_q, "bias_hat"),
            steps=ctx.cfg.bias_steps,
            select=False,
            stage=f"bias-r{r}",
        )
        probs = predict_probs(res.model, train, device=ctx.device)
        b_hat, threshold = pseudo_bias_labels(probs, train.labels)
        facts: dict[str, Any] = {"round": r, "threshold": threshold}
        if train.has_bias:
            facts["pseudo_bias_accuracy"] = float((b_hat == train.bias).float().mean())
        rounds.append(facts)
        log_record(ctx, {"stage": f"bias-r{r}", "pseudo_labels": facts})
        sec_per_step = res.seconds_per_step
    return b_hat, rounds, sec_per_step


@register_method("pbbl", description="pseudo bias-balanced learning (Luo et al. 2022)")
def run_pbbl(ctx: RunContext) -> MethodOutput:
    t0 = time.perf_counter()
    b_hat, rounds, gce_sps = pseudo_label_rounds(ctx)
    c = ctx.cfg.model.num_classes
    prior = bias_prior(b_hat, ctx.train_set.labels, c, c)
    step = make_bbs_step(log_prior(prior, ctx.cfg.prior_eps), "bias_hat")
    train = ctx.train_set.with_bias_hat(b_hat)
    res = run_stage(
        ctx, fresh_model(ctx), train, step, steps=ctx.cfg.steps, select=True, stage="debias"
    )
    info = {
        "rounds": rounds,
        "prior": prior.tolist(),
        "seconds_per_step": res.seconds_per_step,
        "stage1_seconds_per_step": gce_sps,
        "best_step": res.best_step,
        "b_hat": b_hat,
    }
    if rounds and "pseudo_bias_accuracy" in rounds[-1]:
        info["pseudo_bias_accuracy"] = rounds[-1]["pseudo_bias_accuracy"]
    return MethodOutput(res.model, time.perf_counter() - t0, res.valid_metrics, info)
