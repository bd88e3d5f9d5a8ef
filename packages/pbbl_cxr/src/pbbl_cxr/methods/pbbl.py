"""``pbbl``: pseudo bias-balanced learning (Luo et al. 2022), with guards against a stage 1
that hands stage 2 the labels (issue 10).

Stage 1: ``rounds`` rounds of GCE; round 1 fits the targets, round ``r > 1`` fits round
``r - 1``'s pseudo labels. Each round's scores give Youden pseudo bias labels ``b_hat``:

- ``pseudo_labels="in-sample"`` (the authors'): one model per round, scoring the images
  it trained on;
- ``pseudo_labels="cross-fit"``: ``folds`` models per round, each trained on the other
  folds and scoring its own held-out fold, so no image is labelled by a model that saw it.

The prior ``p(y | b_hat)`` is counted on the train set and checked
(:func:`pbbl_cxr.pseudo.prior_check`); a degenerate one is logged (``log.jsonl``,
``metrics.json``), warned about on stderr and, with ``degenerate_response="marginal"``,
replaced by the label marginal. Stage 2 trains a fresh model with the bias-balanced
softmax on ``b_hat`` and selects on the valid split's pseudo-balanced AUC, the valid
pseudo bias labels coming from the stage-1 model(s) and the train threshold.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from medcommon.errors import InputError
from pbbl_cxr.config import RunConfig, resolve_select_metric
from pbbl_cxr.data import XrayDataset
from pbbl_cxr.distributed import is_main_process
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
from pbbl_cxr.pseudo import (
    apply_threshold,
    bias_prior,
    fold_ids,
    log_prior,
    marginal_prior,
    prior_check,
    pseudo_bias_labels,
)
from pbbl_cxr.train import finite_probs


@dataclass
class Stage1:
    """Stage 1's output: train pseudo labels, per-round facts, and the valid split's
    pseudo labels (``None`` without a valid split)."""

    b_hat: torch.Tensor
    rounds: list[dict[str, Any]] = field(default_factory=list)
    seconds_per_step: float = 0.0
    valid_b_hat: torch.Tensor | None = None


def _subset(ds: XrayDataset, idx: torch.Tensor, b_hat: torch.Tensor) -> XrayDataset:
    """Rows ``idx`` of ``ds`` with pseudo labels ``b_hat[idx]``."""
    paths = [ds.paths[i] for i in idx.tolist()] if ds.paths else []  # in-memory sets have none
    return XrayDataset(ds.images[idx], ds.labels[idx], ds.bias[idx], paths, b_hat[idx])


def _round_scores(
    ctx: RunContext, target: torch.Tensor, r: int, folds: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """One round: GCE model(s) fit on ``target``; returns train probs ``(N, C)`` (held-out
    ones when cross-fitting), valid probs (mean over the fold models) and s/step."""
    train, valid = ctx.train_set, ctx.valid_set
    if folds is None:
        res = run_stage(
            ctx,
            fresh_model(ctx),
            train.with_bias_hat(target),
            make_gce_step(ctx.cfg.gce_q, "bias_hat"),
            steps=ctx.cfg.bias_steps,
            select=False,
            stage=f"bias-r{r}",
        )
        probs = finite_probs(
            predict_probs(res.model, train, device=ctx.device), f"the train set in stage bias-r{r}"
        )
        vprobs = predict_probs(res.model, valid, device=ctx.device) if valid else None
        return probs, vprobs, res.seconds_per_step
    probs = torch.zeros(len(train), ctx.cfg.model.num_classes)
    vprobs = torch.zeros(len(valid), ctx.cfg.model.num_classes) if valid else None
    sps = 0.0
    k = int(folds.max()) + 1
    for f in range(k):
        fit_idx = torch.nonzero(folds != f).squeeze(1)
        out_idx = torch.nonzero(folds == f).squeeze(1)
        res = run_stage(
            ctx,
            fresh_model(ctx),
            _subset(train, fit_idx, target),
            make_gce_step(ctx.cfg.gce_q, "bias_hat"),
            steps=ctx.cfg.bias_steps,
            select=False,
            stage=f"bias-r{r}-f{f}",
        )
        probs[out_idx] = finite_probs(
            predict_probs(res.model, _subset(train, out_idx, target), device=ctx.device),
            f"its held-out fold in stage bias-r{r}-f{f}",
        )
        if vprobs is not None:
            vprobs += predict_probs(res.model, valid, device=ctx.device) / k
        sps = res.seconds_per_step
    return probs, vprobs, sps


def check_cross_fit(cfg: RunConfig, labels: torch.Tensor, seed: int) -> torch.Tensor | None:
    """The cross-fitting folds of the train labels (``None`` for in-sample pseudo labels).

    Raises :class:`InputError` when ``batch_size`` exceeds the images a fold model trains
    on; ``train`` calls this before it writes anything, so the run folder is not created.
    """
    if cfg.pseudo_labels != "cross-fit":
        return None
    folds = fold_ids(labels, cfg.folds, seed)
    n_fit = len(labels) - int(torch.bincount(folds).max())
    if cfg.batch_size > n_fit:
        raise InputError(
            "--set batch_size",
            f"{cfg.batch_size} exceeds the {n_fit} images a cross-fitting fold model "
            "trains on; lower batch_size or folds, or set pseudo_labels=in-sample",
        )
    return folds


def pseudo_label_rounds(ctx: RunContext) -> Stage1:
    """Stage 1: ``rounds`` GCE rounds (in-sample or cross-fitted); see the module doc."""
    train = ctx.train_set
    folds = check_cross_fit(ctx.cfg, train.labels, ctx.seed)
    out = Stage1(train.labels.clone())  # round 1 fits the targets
    for r in range(1, ctx.cfg.rounds + 1):
        probs, vprobs, out.seconds_per_step = _round_scores(ctx, out.b_hat, r, folds)
        out.b_hat, threshold = pseudo_bias_labels(probs, train.labels)
        if vprobs is not None:
            out.valid_b_hat = apply_threshold(vprobs, threshold)
        facts: dict[str, Any] = {"round": r, "threshold": threshold}
        facts["agreement_with_label"] = float((out.b_hat == train.labels).float().mean())
        if train.has_bias:
            facts["pseudo_bias_accuracy"] = float((out.b_hat == train.bias).float().mean())
        out.rounds.append(facts)
        log_record(ctx, {"stage": f"bias-r{r}", "pseudo_labels": facts})
    return out


def stage2_prior(ctx: RunContext, b_hat: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """The prior stage 2 uses, and the degeneracy check (logged and warned about)."""
    c = ctx.cfg.model.num_classes
    labels = ctx.train_set.labels
    prior = bias_prior(b_hat, labels, c, c)
    check = prior_check(b_hat, labels, c, ctx.cfg.degenerate_min_share)
    check["response"] = "none"
    if check["degenerate"]:
        if ctx.cfg.degenerate_response == "marginal":
            prior = marginal_prior(labels, c, c)
            check["response"] = "marginal"
        if is_main_process():
            constant = any(sum(row) == 0 for row in check["counts"])
            print(
                f"warning: pbbl: degenerate prior p(y | b_hat): (b_hat, y) cells "
                f"{check['near_empty_cells']} of counts {check['counts']} are empty or hold "
                f"less than {ctx.cfg.degenerate_min_share} of their b_hat row "
                "(degenerate_min_share); "
                + (
                    "b_hat takes one value only, stage 1 found no bias; "
                    if constant
                    else "stage 1 learned the label, not a bias; "
                )
                + (
                    "using the label marginal as the prior (ERM-like stage 2)"
                    if check["response"] == "marginal"
                    else "kept as is (degenerate_response=none)"
                ),
                file=sys.stderr,
            )
    log_record(ctx, {"stage": "prior", "prior": prior.tolist(), "prior_check": check})
    return prior, check


@register_method("pbbl", description="pseudo bias-balanced learning (Luo et al. 2022)")
def run_pbbl(ctx: RunContext) -> MethodOutput:
    t0 = time.perf_counter()
    s1 = pseudo_label_rounds(ctx)
    prior, check = stage2_prior(ctx, s1.b_hat)
    step = make_bbs_step(log_prior(prior, ctx.cfg.prior_eps), "bias_hat")
    train = ctx.train_set.with_bias_hat(s1.b_hat)
    res = run_stage(
        ctx,
        fresh_model(ctx),
        train,
        step,
        steps=ctx.cfg.steps,
        select=True,
        stage="debias",
        valid_bias_hat=s1.valid_b_hat,
    )
    info = {
        "rounds": s1.rounds,
        "prior": prior.tolist(),
        "prior_check": check,
        "pseudo_labels": ctx.cfg.pseudo_labels,
        "select_metric": resolve_select_metric(ctx.cfg.select_metric, s1.valid_b_hat is not None),
        "seconds_per_step": res.seconds_per_step,
        "stage1_seconds_per_step": s1.seconds_per_step,
        "best_step": res.best_step,
        "b_hat": s1.b_hat,
    }
    if s1.rounds and "pseudo_bias_accuracy" in s1.rounds[-1]:
        info["pseudo_bias_accuracy"] = s1.rounds[-1]["pseudo_bias_accuracy"]
    return MethodOutput(res.model, time.perf_counter() - t0, res.valid_metrics, info)
