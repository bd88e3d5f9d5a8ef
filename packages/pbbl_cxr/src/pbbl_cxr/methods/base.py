"""What every method shares: the run inputs and outputs, the registry, and stage helpers.

A method is a ``run(ctx) -> MethodOutput`` function composing one or more training
stages (:func:`run_stage`, i.e. :func:`pbbl_cxr.train.fit_stage` with the run's
settings); it registers itself with :func:`register_method`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcommon.errors import InputError
from medcommon.registry import Registry
from medcommon.train import seed_everything
from pbbl_cxr.config import RunConfig
from pbbl_cxr.data import XrayDataset
from pbbl_cxr.distributed import is_main_process
from pbbl_cxr.models import Classifier, build_model
from pbbl_cxr.train import StageResult, fit_stage


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
    """A registered method: how to run it and whether it needs true train bias labels.

    ``description`` is the one line that :meth:`Registry.describe` shows in ``--help``.
    """

    name: str
    run: Callable[[RunContext], MethodOutput]
    needs_bias: bool = False
    description: str = ""


METHODS: Registry[Method] = Registry("method")


def register_method(name: str, needs_bias: bool = False, description: str = "") -> Callable:
    """Decorator: register a ``run(ctx)`` function as method ``name`` in :data:`METHODS`."""

    def add(fn: Callable[[RunContext], MethodOutput]) -> Callable:
        METHODS.register(name)(Method(name, fn, needs_bias, description))
        return fn

    return add


def fresh_model(ctx: RunContext) -> Classifier:
    """A new classifier, seeded with the run's seed (every stage starts from the same init)."""
    seed_everything(ctx.seed)
    return build_model(ctx.cfg.model)


def run_stage(
    ctx: RunContext, model, train_set, step, *, steps, select, stage=None, **kw
) -> StageResult:
    """:func:`pbbl_cxr.train.fit_stage` with the run's valid split, folder, seed and device."""
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


def run_single(ctx: RunContext, step: Callable, select: bool = True, **kw) -> MethodOutput:
    """A one-stage method: a fresh model trained for ``cfg.steps`` steps of ``step``."""
    t0 = time.perf_counter()
    res = run_stage(
        ctx, fresh_model(ctx), ctx.train_set, step, steps=ctx.cfg.steps, select=select, **kw
    )
    return MethodOutput(
        res.model,
        time.perf_counter() - t0,
        res.valid_metrics,
        {"seconds_per_step": res.seconds_per_step, "best_step": res.best_step},
    )


def n_bias(ctx: RunContext) -> int:
    """Number of bias values: at least the number of classes, more if the bias column has more."""
    return max(ctx.cfg.model.num_classes, int(ctx.train_set.bias.max()) + 1)


def log_record(ctx: RunContext, record: dict[str, Any]) -> None:
    """Append one record to ``RUN/log.jsonl`` (next to the Trainer's lines; main process only)."""
    if ctx.run_dir is None or not is_main_process():
        return
    with open(ctx.run_dir / "log.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def run_method(name: str, ctx: RunContext) -> MethodOutput:
    """Look up ``name`` and run it (checks that oracles have true bias labels)."""
    method = METHODS.get(name)
    if method.needs_bias and not ctx.train_set.has_bias:
        raise InputError(
            "--method", f"{name} needs a bias column in the train manifest (give --bias-column)"
        )
    return method.run(ctx)
