"""One training stage on :class:`medcommon.train.Trainer`, with best-checkpoint keeping.

Every method is a sequence of stages; a stage is a model, a step function and a
number of steps. Checkpoint selection: every ``eval_every`` steps the model is
scored on the valid split and the weights with the best ``select_metric`` are kept
in memory and in the checkpoint, so ``--resume`` keeps them too. The default
(``"auto"``, :func:`pbbl_cxr.config.resolve_select_metric`) is ``auc_balanced`` on the
group-balanced valid split, and for PBBL ``pseudo_balanced_auc`` (valid pseudo bias
groups from stage 1, ``valid_bias_hat``), which needs no bias labels. With
``cfg.augment`` the step function sees augmented training images (:func:`augmenting`);
pseudo-labelling and evaluation see the plain ones.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medcommon.errors import Diverged
from medcommon.train import FitResult, TrainConfig, Trainer
from pbbl_cxr.config import RunConfig, resolve_select_metric
from pbbl_cxr.data import XrayDataset, augment_batch
from pbbl_cxr.evaluate import classification_metrics, predict_probs
from pbbl_cxr.pseudo import pseudo_balanced_auc


# Best-weight keeping is method-side state, not a Trainer feature (issue #19): the
# Trainer logs the evaluations and saves the final weights; the keeper, offered every
# evaluation, holds the best weights of the network a method keeps (LfF: f_D only) and
# is checkpointed with the Trainer's state, so --resume keeps them too.
class BestKeeper:
    """Keeps the weights with the best validation metric; checkpointed as Trainer state."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.value: float | None = None
        self.evals = 0
        self.best_eval: int | None = None
        self.weights: dict[str, torch.Tensor] | None = None
        self.metrics: dict[str, float] = {}

    def offer(self, model: torch.nn.Module, metrics: dict[str, float]) -> None:
        self.evals += 1
        value = metrics.get(self.metric, float("nan"))
        if not self.metric or math.isnan(value):
            return
        if self.value is None or value > self.value:
            self.value, self.best_eval, self.metrics = value, self.evals, dict(metrics)
            self.weights = copy.deepcopy(model.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "evals": self.evals,
            "best_eval": self.best_eval,
            "weights": self.weights,
            "metrics": self.metrics,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.evals = state["value"], state["evals"]
        self.best_eval, self.weights = state["best_eval"], state["weights"]
        self.metrics = dict(state["metrics"])


def finite_probs(probs: torch.Tensor, where: str) -> torch.Tensor:
    """``probs``, or :class:`~medcommon.errors.Diverged` (exit 2, nothing kept) when the
    model's outputs are not finite: weights blown up by too large a learning rate can
    give NaN outputs before the Trainer sees a non-finite loss (an evaluation between
    two steps, a stage-1 model scoring the train set)."""
    if not bool(torch.isfinite(probs).all()):
        raise Diverged(f"the model's outputs on {where} are not finite")
    return probs


@dataclass
class StageResult:
    """What a stage produced: the kept model, the loop's result, timing and selection facts."""

    model: torch.nn.Module
    fit: FitResult
    seconds_per_step: float
    valid_metrics: dict[str, float] = field(default_factory=dict)
    best_step: int | None = None


def augmenting(step_fn: Callable, mode: str, seed: int) -> Callable:
    """``step_fn`` on batches augmented by :func:`pbbl_cxr.data.augment_batch` (``cfg.augment``).

    Draws depend on (seed, step, sample index) only, so ``--resume`` and several
    processes see the same augmented images as one uninterrupted process.
    """

    def step(model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: Any) -> Any:
        images = augment_batch(batch["image"], batch["index"], mode, seed, ctx.step)
        return step_fn(model, {**batch, "image": images}, ctx)

    return step


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """Adam (0.9, 0.999) over the trainable parameters, as in the authors' code."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


def fit_stage(
    model: torch.nn.Module,
    train_set: XrayDataset,
    step_fn: Callable,
    cfg: RunConfig,
    *,
    steps: int,
    valid_set: XrayDataset | None,
    select: bool,
    stage: str | None = None,
    run_dir: str | Path | None = None,
    seed: int = 0,
    state: dict[str, Any] | None = None,
    kept: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    device: str = "cpu",
    quiet: bool = True,
    resume: bool = False,
    valid_bias_hat: torch.Tensor | None = None,
) -> StageResult:
    """Train ``model`` for ``steps`` steps of ``step_fn``; return the kept (best or final) model.

    ``kept`` picks the network that is evaluated and kept (LfF: the debiased one).
    ``valid_bias_hat`` (PBBL) adds ``pseudo_balanced_auc`` to the valid metrics.
    With ``select=False`` the final weights are kept and the valid split is scored once.
    Under torchrun the Trainer gives the BatchNorm layers the global batch's statistics
    while the stage trains (:mod:`medcommon.train.distributed`), so N processes train like one.
    """
    metric = resolve_select_metric(cfg.select_metric, valid_bias_hat is not None)
    keeper = BestKeeper(metric if select else "")
    where = f" in stage {stage}" if stage else ""
    if cfg.augment != "none":
        step_fn = augmenting(step_fn, cfg.augment, seed)

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        net = kept(m)
        probs = predict_probs(net, valid_set, device=str(next(net.parameters()).device))
        finite_probs(probs, f"the valid split{where}")
        metrics = classification_metrics(valid_set.labels, probs, valid_set.bias)
        if valid_bias_hat is not None and probs.shape[1] == 2:
            metrics["pseudo_balanced_auc"] = pseudo_balanced_auc(
                valid_set.labels, probs[:, 1], valid_bias_hat
            )
        keeper.offer(net, metrics)
        return metrics

    tcfg = TrainConfig(
        max_steps=steps,
        batch_size=cfg.batch_size,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every if select else 0,
        checkpoint_every=cfg.checkpoint_every,
        max_grad_norm=cfg.max_grad_norm,
    )
    trainer = Trainer(
        model,
        make_optimizer(model, cfg),
        train_set,
        step_fn,
        config=tcfg,
        run_dir=run_dir,
        seed=seed,
        eval_fn=eval_fn if valid_set is not None else None,
        state={**(state or {}), "best": keeper},
        stage=stage,
        device=device,
        quiet=quiet,
    )
    result = trainer.fit(resume=resume)
    net = kept(trainer.unwrapped_model())
    valid_metrics = result.final_metrics
    best_step = steps
    if select and keeper.weights is not None:
        net.load_state_dict(keeper.weights)
        valid_metrics = keeper.metrics
        best_step = min(steps, keeper.best_eval * cfg.eval_every) if keeper.best_eval else steps
    # FitResult.train_seconds counts optimizer steps only (evaluation excluded).
    return StageResult(net, result, result.train_seconds / max(steps, 1), valid_metrics, best_step)
