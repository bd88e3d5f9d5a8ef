"""Training: a method's stages run on :class:`medcommon.train.Trainer`; the ``train`` command.

:func:`fit_method` trains on in-memory arrays (used by the CLI and the benchmark);
:func:`train_run` is the ``train`` command: it validates every input first (data,
config, method, run folder), then writes ``RUN/config.json``, ``RUN/split.json``,
``RUN/log.jsonl``, ``RUN/checkpoint/<stage>/``, ``RUN/model/`` and ``RUN/metrics.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brats_grading.config import GradingConfig, preset_config
from brats_grading.data import (
    GradingDataset,
    class_weights,
    discover,
    load_cases,
    make_split,
)
from brats_grading.evaluate import grading_metrics, predict_proba
from brats_grading.methods import METHODS, Method
from brats_grading.model import GradingNet
from medcommon.config import config_from_dict, config_to_dict, resolve_config
from medcommon.errors import InputError
from medcommon.fs import write_json_atomic
from medcommon.train import TrainConfig, Trainer, seed_everything

RUN_KEYS = ("method", "seed", "preset")


@dataclass
class FitInfo:
    """What a training run did: seconds, volumes seen per stage, the model."""

    model: GradingNet
    train_seconds: float = 0.0
    volumes: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def volumes_per_second(self) -> float:
        return self.volumes / self.train_seconds if self.train_seconds > 0 else float("nan")


def method_config(
    method: str,
    preset: str,
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> tuple[Method, GradingConfig]:
    """Preset defaults -> the method's model fields -> YAML file -> ``--set`` overrides."""
    m = METHODS.get(method)
    cfg = resolve_config(
        GradingConfig, base=m.adjust(preset_config(preset)), file=file, overrides=overrides
    )
    return m, cfg


def fit_method(
    method: Method,
    cfg: GradingConfig,
    arrays: np.ndarray,
    labels: Sequence[int],
    train_idx: Sequence[int],
    *,
    seed: int = 0,
    run_dir: Path | None = None,
    device: str = "auto",
    quiet: bool = True,
    resume: bool = False,
) -> FitInfo:
    """Train ``method`` on ``arrays[train_idx]`` (``(N, 4, D, H, W)``) and return the model.

    Class imbalance: ``cfg.imbalance="weighted-loss"`` weights the cross-entropy by
    inverse class frequency of the training fold; ``"sampler"`` draws batches with
    probability proportional to it instead.
    """
    train_idx = np.asarray(train_idx)
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
        for p in model.parameters():
            p.requires_grad_(False)
        for p in stage.params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(stage.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(stage.steps, 1))
        tcfg = TrainConfig(
            max_steps=stage.steps,
            batch_size=min(cfg.batch_size, len(train_set)),
            log_every=cfg.log_every,
            checkpoint_every=cfg.checkpoint_every,
            find_unused_parameters=True,
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
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return info


def _read_saved_config(run: Path) -> tuple[dict[str, Any], GradingConfig]:
    import json

    path = run / "config.json"
    if not path.is_file():
        raise InputError(run, "not a run folder (no config.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON ({exc})") from None
    facts = {k: data.pop(k, None) for k in RUN_KEYS}
    return facts, config_from_dict(GradingConfig, data)


def train_run(
    data: Path,
    out: Path,
    method: str,
    preset: str,
    *,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    seed: int = 0,
    device: str = "auto",
    quiet: bool = False,
    resume: bool = False,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """The ``train`` command (see the module docstring); returns the metrics written."""
    from medcommon.train.accelerator import resolve_device

    resolve_device(device)
    overrides = list(overrides)
    if checkpoint_every is not None:
        overrides.append(f"checkpoint_every={checkpoint_every}")
    m, cfg = method_config(method, preset, config_file, overrides)
    out = Path(out)
    if resume:
        if not (out / "config.json").is_file():
            raise InputError(out, "nothing to resume (no config.json)")
        facts, saved = _read_saved_config(out)
        if facts["method"] != method or facts["seed"] != seed:
            raise InputError(
                out, f"run was started with --method {facts['method']} --seed {facts['seed']}"
            )
        cfg = saved
    elif out.exists() and any(out.iterdir()):
        raise InputError(out, "run folder exists and is not empty (use --resume or a new --out)")
    layout, cases = discover(data)
    split = make_split(cases, cfg.folds, cfg.fold, cfg.split_seed)
    arrays = load_cases(cases, cfg.shape, quiet=quiet)  # reads and checks every file
    labels = [c.label for c in cases]
    index = {c.name: i for i, c in enumerate(cases)}
    train_idx = [index[n] for n in split["train"]]
    test_idx = [index[n] for n in split["test"]]

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out / "config.json",
        {"method": method, "seed": seed, "preset": preset, **config_to_dict(cfg)},
    )
    write_json_atomic(
        out / "split.json",
        {"layout": layout, "folds": cfg.folds, "fold": cfg.fold, "split_seed": cfg.split_seed,
         "data": str(Path(data).resolve()), **split},
    )  # fmt: skip
    info = fit_method(
        m, cfg, arrays, labels, train_idx, seed=seed, run_dir=out, device=device,
        quiet=quiet, resume=resume,
    )  # fmt: skip
    probs = predict_proba(info.model, arrays[test_idx])
    metrics = {
        "method": method,
        "fold": cfg.fold,
        "folds": cfg.folds,
        "test": grading_metrics([labels[i] for i in test_idx], probs),
        "train_seconds": info.train_seconds,
        "volumes_per_second": info.volumes_per_second,
        "stages": info.stages,
    }
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
