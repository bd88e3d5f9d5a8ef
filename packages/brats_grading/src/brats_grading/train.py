"""Training: a method's stages run on :class:`medcommon.train.Trainer`; the ``train`` command.

:func:`fit_method` trains on in-memory arrays (used by the CLI and the benchmark);
:func:`train_run` is the ``train`` command: it opens the run folder from its
:class:`~medcommon.run.RunSpec` (:func:`medcommon.run.open_run`: config, ``--resume``),
reads and checks every data file, then writes ``RUN/config.json``, ``RUN/split.json``,
``RUN/log.jsonl``, ``RUN/checkpoint/<stage>/``, ``RUN/model/`` and ``RUN/metrics.json``,
all inside :meth:`RunFolder.writing <medcommon.run.RunFolder.writing>`: a new run that
fails on bad input or diverges (:class:`medcommon.errors.Diverged`, raised by the
trainer) leaves nothing, and ``--overwrite`` replaces the old run only once it finished.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brats_grading.config import RunConfig, run_preset
from brats_grading.data import (
    GradingDataset,
    class_weights,
    discover,
    load_cases,
    make_split,
)
from brats_grading.evaluate import grading_metrics, predict_proba, predict_with_branches
from brats_grading.methods import METHODS, Method, Stage
from brats_grading.model import GradingNet
from medcommon import metrics as M
from medcommon.config import resolve_config
from medcommon.data import patient_split
from medcommon.errors import InputError
from medcommon.fs import write_json_atomic
from medcommon.run import RunSpec, open_run
from medcommon.train import TrainConfig, Trainer, seed_everything
from medcommon.train.seeding import rng_state, set_rng_state


@dataclass
class FitInfo:
    """What a training run did: seconds, volumes seen per stage, the model."""

    model: GradingNet
    train_seconds: float = 0.0
    volumes: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)
    fusion: dict[str, Any] = field(default_factory=dict)

    @property
    def volumes_per_second(self) -> float:
        return self.volumes / self.train_seconds if self.train_seconds > 0 else float("nan")


class StageCache:
    """First stages already trained in this process, reused instead of trained again.

    In the benchmark, three methods start with the same stage on the same fold and
    seed: ``single-t1ce`` trains the t1ce branch with CE, and so do stage 1 of ``cmg``
    and of ``cmg-no-guidance`` (the branch starts from the same weights, see
    :class:`brats_grading.model.GradingNet`, and sees the same batches). A first stage
    that trains one branch with a named loss (:attr:`Stage.loss`) is stored under
    everything its result depends on: the branch, the model fields, the optimiser
    and schedule, the seed and the training cases. A later stage with the same key
    loads the branch's weights and the RNG states after the stage, so the run goes on
    exactly as if it had trained the stage itself. The stage's recorded seconds
    and volumes are still counted in :class:`FitInfo`, so throughput stays the cost
    of the method, not of the cache.

    Only for in-memory fits (no run folder, no resume): a cached stage writes no
    checkpoint or log.
    """

    def __init__(self) -> None:
        self._store: dict[tuple, dict[str, Any]] = {}
        self.hits = 0

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    @staticmethod
    def key(cfg: RunConfig, stage: Stage, arrays: np.ndarray, y: np.ndarray, idx: np.ndarray,
            seed: int, device: str) -> tuple | None:  # fmt: skip
        """The stage's identity, or None when it cannot be reused (see :class:`Stage`)."""
        if stage.loss is None or len(stage.trainable) != 1:
            return None
        # Fields that only say which branches exist and how they are fused do not
        # change a branch's initial weights or its training.
        model = replace(
            cfg.model,
            inputs="branches", modality="t1ce", primary="t1ce", fusion="mean",
            primary_weight=0.5, branch_weights=(),
        )  # fmt: skip
        train = (
            cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.flip, cfg.imbalance,
            cfg.schedule_steps or stage.steps, stage.steps,
        )  # fmt: skip
        data = (id(arrays), arrays.shape, idx.tobytes(), y.tobytes())
        return (stage.trainable[0], stage.loss, repr(model), train, data, seed, device)

    def get(self, key: tuple | None) -> dict[str, Any] | None:
        hit = None if key is None else self._store.get(key)
        self.hits += hit is not None
        return hit

    def put(self, key: tuple | None, model: GradingNet, name: str, seconds: float,
            volumes: int) -> None:  # fmt: skip
        if key is None:
            return
        state = {k: v.detach().clone() for k, v in model.branches[name].state_dict().items()}
        self._store[key] = {"state": state, "rng": rng_state(), "seconds": seconds,
                            "volumes": volumes}  # fmt: skip


def method_config(
    method: str,
    preset: str,
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> tuple[Method, RunConfig]:
    """Preset defaults -> the method's model fields -> YAML file -> ``--set`` overrides."""
    m = METHODS.get(method)
    cfg = resolve_config(
        RunConfig, base=m.adjust(run_preset(preset)), file=file, overrides=overrides
    )
    return m, cfg


def needs_reliability(cfg: RunConfig) -> bool:
    """True if the fused prediction waits for validation-fitted branch weights."""
    m = cfg.model
    return m.inputs == "branches" and m.fusion == "reliability" and not m.branch_weights


def reliability_weights(val_aucs: dict[str, float], modalities: Sequence[str]) -> tuple:
    """``w_m = max(AUC_val(m) - 1/2, 0)``: a branch's evidence above chance, nothing below.

    Returns one weight per modality (normalised to sum 1), or ``()`` when no branch
    beats chance (or the validation split holds one grade only): the fusion then
    stays the uniform mean.
    """
    raw = [max(val_aucs.get(m, float("nan")) - 0.5, 0.0) for m in modalities]
    raw = [0.0 if not np.isfinite(v) else v for v in raw]
    total = sum(raw)
    return tuple(v / total for v in raw) if total > 0 else ()


def fit_method(
    method: Method,
    cfg: RunConfig,
    arrays: np.ndarray,
    labels: Sequence[int],
    train_idx: Sequence[int],
    *,
    patients: Sequence | None = None,
    seed: int = 0,
    run_dir: Path | None = None,
    device: str = "auto",
    quiet: bool = True,
    resume: bool = False,
    cache: StageCache | None = None,
) -> FitInfo:
    """Train ``method`` on ``arrays[train_idx]`` (``(N, 4, D, H, W)``) and return the model.

    Class imbalance: ``cfg.imbalance="weighted-loss"`` weights the cross-entropy by
    inverse class frequency of the training fold; ``"sampler"`` draws batches with
    probability proportional to it instead.

    Reliability fusion (``model.fusion="reliability"``, no ``branch_weights`` given):
    the training fold is split by patient, stratified by grade (``medcommon.data.
    patient_split``, seed ``seed``) into inner-train and validation
    (``cfg.val_fraction``); the method is trained on inner-train, each branch's AUC is
    measured on validation, the weights :func:`reliability_weights` are set in the model
    config, and the method is trained again, with the same seed, on the whole training
    fold. The test fold is never seen; ``patients`` (one id per case of ``arrays``)
    keeps a patient's scans on one side. ``FitInfo.fusion`` records the outcome;
    when no branch beats chance the fusion stays the plain mean, and its
    ``"rule"`` is ``"mean"`` with a ``"fallback"`` sentence saying why (``train``
    prints it as a warning and keeps it in ``metrics.json``).

    ``cache`` (in-memory fits only): first stages another method already trained
    identically are loaded instead of trained again (:class:`StageCache`).
    """
    if run_dir is not None or resume:
        cache = None
    train_idx = np.asarray(train_idx)
    if not needs_reliability(cfg):
        return _fit(
            method, cfg, arrays, labels, train_idx, seed, run_dir, device, quiet, resume, cache
        )
    y_all = np.asarray(labels)
    groups = np.asarray(patients if patients is not None else np.arange(len(y_all)))
    inner, val = patient_split(
        groups[train_idx].tolist(),
        [1.0 - cfg.val_fraction, cfg.val_fraction],
        seed=seed,
        labels=y_all[train_idx].tolist(),
    )
    inner_info = _fit(
        method, cfg, arrays, labels, train_idx[inner], seed, None, device, quiet, False, cache
    )
    val_idx = train_idx[val]
    val_aucs = _branch_aucs(inner_info.model, arrays[val_idx], y_all[val_idx].tolist())
    weights = reliability_weights(val_aucs, cfg.model.modalities)
    cfg = replace(cfg, model=replace(cfg.model, branch_weights=weights))
    info = _fit(method, cfg, arrays, labels, train_idx, seed, run_dir, device, quiet, resume, cache)
    info.train_seconds += inner_info.train_seconds
    info.volumes += inner_info.volumes
    info.stages = [
        {**st, "stage": f"inner-{st['stage']}"} for st in inner_info.stages
    ] + info.stages
    info.fusion = {
        "rule": "reliability" if weights else "mean",
        "val_auc": val_aucs,
        "weights": dict(zip(cfg.model.modalities, weights, strict=True)) if weights else {},
        "n_inner": len(inner),
        "n_val": len(val),
    }
    if not weights:
        aucs = ", ".join(f"{m} {val_aucs.get(m, float('nan')):.3f}" for m in cfg.model.modalities)
        info.fusion["fallback"] = (
            "reliability fusion fell back to the plain mean of the branches: no branch "
            f"beat chance on the validation split (AUC {aucs})"
        )
    return info


def _branch_aucs(model: GradingNet, arrays: np.ndarray, y: list[int]) -> dict[str, float]:
    _, probs = predict_with_branches(model, arrays)
    return {n: M.auc(y, p) for n, p in probs.items()}


def stage_optimizer(cfg: RunConfig, model: GradingNet, stage: Stage) -> torch.optim.Optimizer:
    """Make only ``stage.params`` trainable and return their AdamW (``cfg.lr``, ``cfg.weight_decay``).

    The other parameters get ``requires_grad=False``, so a frozen teacher receives
    no gradient and is not in the optimizer (no weight decay moves it either).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for p in stage.params:
        p.requires_grad_(True)
    return torch.optim.AdamW(stage.params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _fit(
    method: Method,
    cfg: RunConfig,
    arrays: np.ndarray,
    labels: Sequence[int],
    train_idx: np.ndarray,
    seed: int,
    run_dir: Path | None,
    device: str,
    quiet: bool,
    resume: bool,
    cache: StageCache | None = None,
) -> FitInfo:
    y = np.asarray(labels)[train_idx]
    train_set = GradingDataset(arrays[train_idx], y, flip=cfg.flip)
    weight = class_weights(y) if cfg.imbalance == "weighted-loss" else None
    sample_weights = None
    if cfg.imbalance == "sampler":
        per_class = class_weights(y).numpy()
        sample_weights = per_class[y].tolist()
    seed_everything(seed)
    model = GradingNet(cfg.model)
    info = FitInfo(model)
    stages = method.stages(cfg, model, weight)
    multi = len(stages) > 1
    for stage in stages:
        key = None
        if cache is not None and stage is stages[0]:
            key = StageCache.key(cfg, stage, arrays, y, train_idx, seed, device)
            hit = cache.get(key)
            if hit is not None:
                model.branches[stage.trainable[0]].load_state_dict(hit["state"])
                set_rng_state(hit["rng"])
                info.train_seconds += hit["seconds"]
                info.volumes += hit["volumes"]
                info.stages.append(
                    {"stage": stage.name or "train", "steps": stage.steps,
                     "seconds": hit["seconds"], "trainable": stage.trainable, "cached": True}
                )  # fmt: skip
                continue
        optimizer = stage_optimizer(cfg, model, stage)
        period = cfg.schedule_steps or stage.steps
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(period, 1))
        tcfg = TrainConfig(
            max_steps=stage.steps,
            batch_size=min(cfg.batch_size, len(train_set)),
            log_every=cfg.log_every,
            checkpoint_every=cfg.checkpoint_every,
            find_unused_parameters=True,
            mixed_precision=cfg.mixed_precision,
        )
        last = stage is stages[-1]
        trainer = Trainer(
            model,
            optimizer,
            train_set,
            stage.step_fn,
            config=tcfg,
            run_dir=run_dir,
            seed=seed,
            model_config=cfg.model if last else None,
            scheduler=scheduler,
            sample_weights=sample_weights,
            stage=stage.name if multi else None,
            device=device,
            quiet=quiet,
        )
        t0 = time.perf_counter()
        result = trainer.fit(resume=resume)
        seconds = result.train_seconds or (time.perf_counter() - t0)
        volumes = stage.steps * tcfg.batch_size
        info.train_seconds += seconds
        info.volumes += volumes
        info.stages.append(
            {"stage": stage.name or "train", "steps": stage.steps, "seconds": seconds,
             "trainable": stage.trainable}
        )  # fmt: skip
        if cache is not None:
            cache.put(key, model, stage.trainable[0], seconds, volumes)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return info


RESUMABLE = ("steps", "primary_steps", "schedule_steps", "checkpoint_every", "log_every")
"""The fields ``train --resume`` may change (``--set steps=N`` extends a finished run)."""


def train_run(spec: RunSpec) -> dict[str, Any]:
    """The ``train`` command (see the module docstring); returns the metrics written.

    The config is the preset adjusted by the method <- ``spec.config_file`` <-
    ``spec.overrides``; with ``spec.resume`` it is the run's saved config, of which
    only :data:`RESUMABLE` fields may change.
    """
    run = open_run(
        spec,
        RunConfig,
        base=lambda s: METHODS.get(s.method).adjust(run_preset(s.preset)),
        resumable=RESUMABLE,
    )
    if spec.data is None:
        raise InputError("--data", "train needs a dataset folder")
    cfg, data = run.cfg, Path(spec.data)
    layout, cases = discover(data)
    split = make_split(cases, cfg.folds, cfg.fold, cfg.split_seed)
    arrays = load_cases(cases, cfg.shape, quiet=spec.quiet)  # reads and checks every file
    labels = [c.label for c in cases]
    index = {c.name: i for i, c in enumerate(cases)}
    train_idx = [index[n] for n in split["train"]]
    test_idx = [index[n] for n in split["test"]]

    with run.writing(layout=layout):  # a run that fails on bad input or diverges leaves nothing
        write_json_atomic(
            run.path / "split.json",
            {"layout": layout, "folds": cfg.folds, "fold": cfg.fold,
             "split_seed": cfg.split_seed, "data": str(data.resolve()), **split},
        )  # fmt: skip
        fit = fit_method(
            METHODS.get(run.method), cfg, arrays, labels, train_idx,
            patients=[c.patient for c in cases], seed=run.seed, run_dir=run.path,
            device=spec.device, quiet=spec.quiet, resume=run.resumed,
        )  # fmt: skip
        probs = predict_proba(fit.model, arrays[test_idx])
        metrics = {
            "method": run.method,
            "fold": cfg.fold,
            "folds": cfg.folds,
            "test": grading_metrics([labels[i] for i in test_idx], probs),
            "train_seconds": fit.train_seconds,
            "volumes_per_second": fit.volumes_per_second,
            "stages": fit.stages,
        }
        if fit.fusion:
            metrics["fusion"] = fit.fusion
            if "fallback" in fit.fusion:
                print(f"warning: {fit.fusion['fallback']}", file=sys.stderr)
        run.finish(metrics)
    return metrics
