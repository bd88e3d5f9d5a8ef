"""What every method is made of: a config adjustment and a list of training stages.

A stage is a set of trainable parameters, a step function for
:class:`medcommon.train.Trainer` and a number of steps. The method modules of this
subpackage register themselves in :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from brats_grading.config import RunConfig
from brats_grading.losses import weighted_ce
from brats_grading.model import GradingNet
from medcommon.registry import Registry

StepFn = Callable[[nn.Module, dict, object], dict]
StagesFn = Callable[[RunConfig, GradingNet, "torch.Tensor | None"], "list[Stage]"]


@dataclass
class Stage:
    """One Trainer run: ``name`` (None for single-stage methods), parameters, step, steps.

    ``loss``: a name for the step function's objective when it is a function of the
    ``trainable`` branches' own outputs alone (``"ce"``); a first stage that trains one
    branch with such a loss may be reused by another method whose first stage trains
    the same branch the same way (:class:`brats_grading.train.StageCache`). None: never
    reused.
    """

    name: str | None
    params: list[nn.Parameter]
    step_fn: StepFn
    steps: int
    trainable: list[str]
    loss: str | None = None


@dataclass(frozen=True)
class Method:
    """A ``--method`` entry: ``adjust`` fixes its model fields, ``stages`` builds its training."""

    name: str
    description: str
    adjust: Callable[[RunConfig], RunConfig]
    stages: StagesFn


METHODS: Registry[Method] = Registry("method")


def register(name: str, description: str, adjust: Callable, stages: StagesFn) -> Method:
    """Add a :class:`Method` to :data:`METHODS` (``description``: one line for ``--help``)."""
    return METHODS.register(name)(Method(name, description, adjust, stages))


def unwrap(model: nn.Module) -> GradingNet:
    """The :class:`GradingNet` inside a DDP/Accelerate wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def branch_params(net: GradingNet, names: list[str]) -> list[nn.Parameter]:
    """The parameters of the named branches, in branch order."""
    return [p for n in names for p in net.branches[n].parameters()]


def ce_step(weight: torch.Tensor | None, branches: list[str] | None = None) -> StepFn:
    """Cross-entropy on each listed branch's logits (averaged); all branches if None."""

    def step(model: nn.Module, batch: dict, ctx) -> dict:
        out = model(batch["x"], branches=branches)
        w = None if weight is None else weight.to(batch["x"].device)
        losses = [weighted_ce(z, batch["y"], w) for z in out["branch_logits"].values()]
        return {"loss": sum(losses) / len(losses)}

    return step


def one_stage(cfg: RunConfig, net: GradingNet, weight: torch.Tensor | None) -> list[Stage]:
    """A single CE stage over every branch the model has (``cfg.steps`` steps)."""
    names = net.branch_names
    return [Stage(None, branch_params(net, names), ce_step(weight), cfg.steps, names, "ce")]
