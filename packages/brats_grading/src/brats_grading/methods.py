"""The methods of ``--method``: each is a config adjustment plus training stages.

A stage is a set of trainable parameters, a step function for
:class:`medcommon.train.Trainer` and a number of steps:

| method | model | stages |
|---|---|---|
| ``single-<m>`` | one branch on modality m | CE |
| ``early-fusion`` | one branch on the 4-channel stack | CE |
| ``late-fusion`` | four branches, mean of probabilities | sum of per-branch CE (independent) |
| ``cmg`` | four branches + dual attention, reliability-weighted fusion | 1: primary CE; 2: guided secondaries |
| ``cmg-no-attention`` | as cmg, no dual attention | as cmg |
| ``cmg-no-guidance`` | as cmg | as cmg with ``kd_weight = feature_weight = 0`` |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from brats_grading.config import GradingConfig, replace
from brats_grading.losses import guidance_loss, weighted_ce
from brats_grading.model import GradingNet
from medcommon.registry import Registry

StepFn = Callable[[nn.Module, dict, object], dict]


@dataclass
class Stage:
    """One Trainer run: ``name`` (None for single-stage methods), parameters, step, steps."""

    name: str | None
    params: list[nn.Parameter]
    step_fn: StepFn
    steps: int
    trainable: list[str]


@dataclass(frozen=True)
class Method:
    """A ``--method`` entry: ``adjust`` fixes its model fields, ``stages`` builds its training."""

    name: str
    description: str
    adjust: Callable[[GradingConfig], GradingConfig]
    stages: Callable[[GradingConfig, GradingNet, torch.Tensor | None], list[Stage]]


METHODS: Registry[Method] = Registry("method")


def _unwrap(model: nn.Module) -> GradingNet:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def _params(net: GradingNet, names: list[str]) -> list[nn.Parameter]:
    return [p for n in names for p in net.branches[n].parameters()]


def ce_step(weight: torch.Tensor | None, branches: list[str] | None = None) -> StepFn:
    """Cross-entropy on each listed branch's logits (averaged); all branches if None."""

    def step(model: nn.Module, batch: dict, ctx) -> dict:
        out = model(batch["x"], branches=branches)
        w = None if weight is None else weight.to(batch["x"].device)
        losses = [weighted_ce(z, batch["y"], w) for z in out["branch_logits"].values()]
        return {"loss": sum(losses) / len(losses)}

    return step


def guided_step(cfg: GradingConfig, net: GradingNet, weight: torch.Tensor | None) -> StepFn:
    """Stage 2 of CMG: the primary branch guides the secondaries (see :mod:`.losses`)."""
    primary = cfg.model.primary
    secondary = net.secondary_names()
    g = cfg.guidance

    def step(model: nn.Module, batch: dict, ctx) -> dict:
        x, y = batch["x"], batch["y"]
        w = None if weight is None else weight.to(x.device)
        if g.freeze_primary:
            branch = _unwrap(model).branches[primary]
            branch.eval()  # a fixed teacher: no BN statistics updates, no dropout
            with torch.no_grad():
                teacher = model(x, branches=[primary])
        else:
            teacher = model(x, branches=[primary])
        student = model(x, branches=secondary)
        out = guidance_loss(
            teacher["branch_logits"][primary],
            teacher["features"][primary],
            student["branch_logits"],
            student["features"],
            y,
            temperature=g.temperature,
            kd_weight=g.kd_weight,
            feature_weight=g.feature_weight,
            ce_weight=g.ce_weight,
            class_weight=w,
        )
        if not g.freeze_primary:
            out["loss"] = out["loss"] + weighted_ce(teacher["branch_logits"][primary], y, w)
        return out

    return step


def _one_stage(cfg: GradingConfig, net: GradingNet, weight: torch.Tensor | None) -> list[Stage]:
    names = net.branch_names
    return [Stage(None, _params(net, names), ce_step(weight), cfg.steps, names)]


def _cmg_stages(cfg: GradingConfig, net: GradingNet, weight: torch.Tensor | None) -> list[Stage]:
    primary = cfg.model.primary
    second = net.secondary_names()
    trainable = second if cfg.guidance.freeze_primary else [primary, *second]
    return [
        Stage("primary", _params(net, [primary]), ce_step(weight, [primary]), cfg.primary_steps, [primary]),
        Stage("guided", _params(net, trainable), guided_step(cfg, net, weight), cfg.steps, trainable),
    ]  # fmt: skip


def _register(name: str, description: str, adjust, stages) -> None:
    METHODS.register(name)(Method(name, description, adjust, stages))


for _mod in ("t1", "t1ce", "t2", "flair"):
    _register(
        f"single-{_mod}",
        f"one MC3 + dual-attention branch on {_mod}",
        lambda c, m=_mod: replace(c, model={"inputs": "single", "modality": m}),
        _one_stage,
    )
_register(
    "early-fusion",
    "one branch on the 4-channel stack",
    lambda c: replace(c, model={"inputs": "early"}),
    _one_stage,
)
_register(
    "late-fusion",
    "four independently trained branches, mean of probabilities",
    lambda c: replace(c, model={"inputs": "branches", "fusion": "mean"}),
    _one_stage,
)
_register(
    "cmg",
    "cross-modality guidance + dual attention, two stages, reliability-weighted fusion",
    lambda c: replace(c, model={"inputs": "branches", "fusion": "reliability"}),
    _cmg_stages,
)
_register(
    "cmg-no-attention",
    "cmg without the dual attention",
    lambda c: replace(c, model={"inputs": "branches", "fusion": "reliability", "attention": False}),
    _cmg_stages,
)
_register(
    "cmg-no-guidance",
    "cmg with the distillation and alignment weights set to 0",
    lambda c: replace(
        c,
        model={"inputs": "branches", "fusion": "reliability"},
        guidance={"kd_weight": 0.0, "feature_weight": 0.0},
    ),
    _cmg_stages,
)
