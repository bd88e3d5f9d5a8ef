"""The methods: step functions on :class:`medcommon.train.Trainer` and the stages they run.

=============  ===================================================================
``erm``         cross-entropy.
``gce``         the biased model alone: GCE (q) on the labels, final weights kept.
``lff``         Learning from Failure (Nam et al. 2020): GCE biased + reweighted CE.
``groupdro``    online Group DRO over the true (label, bias) groups (oracle).
``bbs-oracle``  bias-balanced softmax with the true bias labels (oracle).
``pbbl``        pseudo bias-balanced learning (Luo et al. 2022): GCE rounds ->
                Youden pseudo bias labels -> prior p(y | b_hat) -> bias-balanced softmax.
=============  ===================================================================

Adding a method: a step function, a ``run`` function composing :func:`fit_stage` calls,
and one ``METHODS.register`` line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medcommon.errors import InputError
from medcommon.registry import Registry
from medcommon.train import seed_everything
from pbbl_cxr.config import RunConfig
from pbbl_cxr.data import XrayDataset
from pbbl_cxr.evaluate import predict_probs
from pbbl_cxr.losses import (
    GroupDROWeights,
    LossEMA,
    bias_balanced_ce,
    gce_loss,
    lff_weights,
)
from pbbl_cxr.models import BiasedDebiasedPair, Classifier, build_model
from pbbl_cxr.pseudo import bias_prior, log_prior, pseudo_bias_labels
from pbbl_cxr.train import fit_stage


# ----------------------------------------------------------------- step functions
def erm_step(model: torch.nn.Module, batch: dict, ctx: Any) -> torch.Tensor:
    """Cross-entropy on the labels."""
    return F.cross_entropy(model(batch["image"]), batch["label"])


def make_gce_step(q: float, target_key: str = "bias_hat") -> Callable:
    """GCE on ``batch[target_key]`` (stage 1: the previous round's labels; round 1: the targets)."""

    def gce_step(model: torch.nn.Module, batch: dict, ctx: Any) -> torch.Tensor:
        return gce_loss(model(batch["image"]), batch[target_key], q).mean()

    return gce_step


def make_bbs_step(log_p: torch.Tensor, bias_key: str) -> Callable:
    """Bias-balanced softmax ``CE(z + log P[b], y)`` with ``b = batch[bias_key]``."""

    def bbs_step(model: torch.nn.Module, batch: dict, ctx: Any) -> torch.Tensor:
        logits = model(batch["image"])
        return bias_balanced_ce(logits, batch["label"], batch[bias_key], log_p.to(logits.device))

    return bbs_step


def make_groupdro_step(n_bias: int) -> Callable:
    """Group DRO over groups ``g = y * n_bias + b``; weights live in ``ctx.state["dro"]``."""

    def groupdro_step(model: torch.nn.Module, batch: dict, ctx: Any) -> dict:
        per_sample = F.cross_entropy(model(batch["image"]), batch["label"], reduction="none")
        group = batch["label"] * n_bias + batch["bias"]
        loss = ctx.state["dro"].loss(per_sample, group)
        return {"loss": loss, "q_max": ctx.state["dro"].q.max()}

    return groupdro_step


def make_lff_step(q: float, labels_all: torch.Tensor) -> Callable:
    """LfF: ``GCE(f_B) + W * CE(f_D)``, ``W = l_B / (l_B + l_D)`` from class-normalised loss EMAs."""

    def lff_step(model: torch.nn.Module, batch: dict, ctx: Any) -> dict:
        x, y, idx = batch["image"], batch["label"], batch["index"]
        logits_b, logits_d = model(x)  # through the (DDP) wrapper, so both networks sync
        ce_b = F.cross_entropy(logits_b, y, reduction="none").detach()
        ce_d = F.cross_entropy(logits_d, y, reduction="none")
        ema_b, ema_d = ctx.state["ema_b"], ctx.state["ema_d"]
        lb = ema_b.update(ce_b, idx) / ema_b.class_max(labels_all, y)
        ld = ema_d.update(ce_d.detach(), idx) / ema_d.class_max(labels_all, y)
        w = lff_weights(lb, ld)
        loss = gce_loss(logits_b, y, q).mean() + (ce_d * w).mean()
        return {"loss": loss, "lff_weight": w.mean()}

    return lff_step


# -------------------------------------------------------------------- running
@dataclass
class RunContext:
    """Inputs every method needs."""

    cfg: RunConfig
    train_set: XrayDataset
    valid_set: XrayDataset | None
    run_dir: Path | None = None
    seed: int = 0
    device: str = "cpu"
    quiet: bool = True
    resume: bool = False


@dataclass
class MethodOutput:
    """The kept model and facts to report (timings, selection, pseudo-label accuracy)."""

    model: Classifier
    train_seconds: float
    valid_metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A registered method: how to run it and whether it needs true train bias labels."""

    name: str
    run: Callable[[RunContext], MethodOutput]
    needs_bias: bool = False
    summary: str = ""


METHODS: Registry[Method] = Registry("method")


def _register(name: str, needs_bias: bool = False, summary: str = "") -> Callable:
    def add(fn: Callable[[RunContext], MethodOutput]) -> Callable:
        METHODS.register(name)(Method(name, fn, needs_bias, summary))
        return fn

    return add


def _fresh(ctx: RunContext) -> Classifier:
    seed_everything(ctx.seed)
    return build_model(ctx.cfg.model)


def _stage(ctx: RunContext, model, train_set, step, *, steps, select, stage=None, **kw):
    return fit_stage(
        model,
        train_set,
        step,
        ctx.cfg,
        steps=steps,
        valid_set=ctx.valid_set,
        select=select,
        stage=stage,
        run_dir=ctx.run_dir,
        seed=ctx.seed,
        device=ctx.device,
        quiet=ctx.quiet,
        resume=ctx.resume,
        **kw,
    )


def _single(ctx: RunContext, step: Callable, select: bool = True, **kw) -> MethodOutput:
    t0 = time.perf_counter()
    res = _stage(ctx, _fresh(ctx), ctx.train_set, step, steps=ctx.cfg.steps, select=select, **kw)
    return MethodOutput(
        res.model,
        time.perf_counter() - t0,
        res.valid_metrics,
        {"seconds_per_step": res.seconds_per_step, "best_step": res.best_step},
    )


@_register("erm", summary="cross-entropy")
def run_erm(ctx: RunContext) -> MethodOutput:
    return _single(ctx, erm_step)


@_register("gce", summary="the GCE-trained biased model alone (final weights)")
def run_gce(ctx: RunContext) -> MethodOutput:
    train = ctx.train_set.with_bias_hat(ctx.train_set.labels)
    t0 = time.perf_counter()
    res = _stage(
        ctx,
        _fresh(ctx),
        train,
        make_gce_step(ctx.cfg.gce_q),
        steps=ctx.cfg.bias_steps,
        select=False,
    )
    return MethodOutput(
        res.model,
        time.perf_counter() - t0,
        res.valid_metrics,
        {"seconds_per_step": res.seconds_per_step},
    )


@_register("lff", summary="Learning from Failure (Nam et al. 2020)")
def run_lff(ctx: RunContext) -> MethodOutput:
    seed_everything(ctx.seed)
    pair = BiasedDebiasedPair(build_model(ctx.cfg.model), build_model(ctx.cfg.model))
    n = len(ctx.train_set)
    state = {"ema_b": LossEMA(n, ctx.cfg.lff_ema), "ema_d": LossEMA(n, ctx.cfg.lff_ema)}
    t0 = time.perf_counter()
    res = _stage(
        ctx,
        pair,
        ctx.train_set,
        make_lff_step(ctx.cfg.gce_q, ctx.train_set.labels),
        steps=ctx.cfg.steps,
        select=True,
        state=state,
        kept=lambda m: m.debiased,
    )
    return MethodOutput(
        res.model,
        time.perf_counter() - t0,
        res.valid_metrics,
        {"seconds_per_step": res.seconds_per_step, "best_step": res.best_step},
    )


def _n_bias(ctx: RunContext) -> int:
    return max(ctx.cfg.model.num_classes, int(ctx.train_set.bias.max()) + 1)


@_register("groupdro", needs_bias=True, summary="Group DRO on true (label, bias) groups")
def run_groupdro(ctx: RunContext) -> MethodOutput:
    n_bias = _n_bias(ctx)
    n_groups = ctx.cfg.model.num_classes * n_bias
    state = {"dro": GroupDROWeights(n_groups, ctx.cfg.groupdro_eta)}
    return _single(ctx, make_groupdro_step(n_bias), state=state)


@_register("bbs-oracle", needs_bias=True, summary="bias-balanced softmax, true bias labels")
def run_bbs_oracle(ctx: RunContext) -> MethodOutput:
    c = ctx.cfg.model.num_classes
    prior = bias_prior(ctx.train_set.bias, ctx.train_set.labels, _n_bias(ctx), c)
    out = _single(ctx, make_bbs_step(log_prior(prior, ctx.cfg.prior_eps), "bias"))
    out.info["prior"] = prior.tolist()
    return out


def pseudo_label_rounds(ctx: RunContext) -> tuple[torch.Tensor, list[dict[str, Any]], float]:
    """Stage 1: ``rounds`` GCE models, each fit on the previous round's labels; returns
    ``(b_hat, per-round facts, seconds per GCE step)``."""
    train = ctx.train_set
    b_hat = train.labels.clone()  # round 1 fits the targets
    rounds = []
    sec_per_step = 0.0
    for r in range(1, ctx.cfg.rounds + 1):
        res = _stage(
            ctx,
            _fresh(ctx),
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
        _log(ctx, {"stage": f"bias-r{r}", "pseudo_labels": facts})
        sec_per_step = res.seconds_per_step
    return b_hat, rounds, sec_per_step


def _log(ctx: RunContext, record: dict[str, Any]) -> None:
    """Append one record to ``RUN/log.jsonl`` (next to the Trainer's lines)."""
    if ctx.run_dir is None:
        return
    with open(ctx.run_dir / "log.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


@_register("pbbl", summary="pseudo bias-balanced learning (Luo et al. 2022)")
def run_pbbl(ctx: RunContext) -> MethodOutput:
    t0 = time.perf_counter()
    b_hat, rounds, gce_sps = pseudo_label_rounds(ctx)
    c = ctx.cfg.model.num_classes
    prior = bias_prior(b_hat, ctx.train_set.labels, c, c)
    step = make_bbs_step(log_prior(prior, ctx.cfg.prior_eps), "bias_hat")
    train = ctx.train_set.with_bias_hat(b_hat)
    res = _stage(ctx, _fresh(ctx), train, step, steps=ctx.cfg.steps, select=True, stage="debias")
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


def run_method(name: str, ctx: RunContext) -> MethodOutput:
    """Look up ``name`` and run it (checks that oracles have true bias labels)."""
    method = METHODS.get(name)
    if method.needs_bias and not ctx.train_set.has_bias:
        raise InputError(
            "--method", f"{name} needs a bias column in the train manifest (give --bias-column)"
        )
    return method.run(ctx)
