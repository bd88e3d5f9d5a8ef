"""A ``train`` run, start to finish, and its run folder (opened through :func:`medcommon.run.open_run`).

``RUN/`` holds (README "Shared contract")::

    config.json       {"schema": 1, "run": {..., "extra": {"data_options": ...}}, "config": RunConfig}
    log.jsonl         the Trainer's log, plus PBBL's pseudo-label records
    checkpoint/       per stage (PBBL: bias-r1[-fK] ... debias) for --resume
    model/            the kept classifier (config.json + model.safetensors)
    pseudo_bias.csv   PBBL only: path,label,bias,bias_hat of every train image
    metrics.json      valid metrics of the kept model, selection, timings, method facts
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from medcommon.config import config_to_dict
from medcommon.errors import InputError
from medcommon.fs import write_text_atomic
from medcommon.models import save_pretrained
from medcommon.run import RunSpec, open_run
from pbbl_cxr.config import RunConfig, resolve_select_metric, run_preset
from pbbl_cxr.data import XrayDataset, data_options, load_split
from pbbl_cxr.distributed import is_main_process
from pbbl_cxr.methods import METHODS, RunContext, run_method
from pbbl_cxr.methods.pbbl import check_cross_fit
from pbbl_cxr.models import build_model, saved_config

RESUMABLE = ("steps", "bias_steps", "log_every", "checkpoint_every")
"""The config fields ``--resume`` may change (``--set steps=N`` trains a finished run on)."""


def _pseudo_bias_csv(train: XrayDataset, b_hat) -> str:
    lines = ["path,label,bias,bias_hat"] + [
        f"{p},{int(y)},{int(b)},{int(h)}"
        for p, y, b, h in zip(train.paths, train.labels, train.bias, b_hat)
    ]
    return "\n".join(lines) + "\n"


def train_run(spec: RunSpec) -> dict[str, Any]:
    """Train ``spec.method`` on the dataset folder ``spec.data`` into the run folder ``spec.out``.

    The config is the preset's ``run`` section <- ``--config`` <- ``--set`` (on
    ``--resume``, the run's own, :data:`RESUMABLE` fields changeable); the data options
    are the ``--label-column``/``--bias-column``/``--image-root``/``--path-map`` flags
    (``spec.options``). Every input is checked (config, method, manifests, every image
    decoded, batch size, cross-fitting folds, backbone file) before anything is written,
    so bad input raises :class:`InputError` and leaves no run folder; what fails later (a
    divergence, :class:`~medcommon.errors.Diverged`) removes the new run folder
    (:meth:`medcommon.run.RunFolder.writing`; a resumed run keeps its folder, an
    ``--overwrite`` run leaves the old run in place). Returns the metrics written to
    ``RUN/metrics.json``.
    """
    run = open_run(spec, RunConfig, base=lambda s: run_preset(s.preset), resumable=RESUMABLE)
    cfg = run.cfg.check()
    method = METHODS.get(run.method)
    opts = data_options(spec.options, cfg.model.image_size, cfg.model.num_classes)
    check_model(cfg)
    train = load_split(spec.data, "train", opts, quiet=spec.quiet)
    valid = load_split(spec.data, "valid", opts, quiet=spec.quiet)
    if method.needs_bias and not train.has_bias:
        raise InputError("--method", f"{run.method} needs a bias column in the train manifest")
    if cfg.batch_size > len(train):
        raise InputError(
            "--set batch_size", f"{cfg.batch_size} exceeds the {len(train)} training images"
        )
    if run.method == "pbbl":
        check_cross_fit(cfg, train.labels, run.seed)
    # All inputs are valid: from here on the run folder is written (under run.path; a
    # bad input or a divergence inside leaves nothing of a new run, medcommon.run).
    main = is_main_process()
    with run.writing(cfg, data_options=config_to_dict(opts)):
        ctx = RunContext(
            cfg, train, valid, run.path, run.seed, spec.device, spec.quiet, run.resumed
        )
        result = run_method(run.method, ctx)
        facts = {k: v for k, v in result.info.items() if k != "b_hat"}
        # the metric the method actually selected on ("auto" resolved; PBBL reports its own)
        metric = facts.pop("select_metric", None) or resolve_select_metric(cfg.select_metric, False)
        selected = bool(metric) and metric in result.valid_metrics
        if metric and not selected and main:
            print(
                f"warning: valid split gives no {metric!r} (no bias column?): kept the final "
                "weights",
                file=sys.stderr,
            )
        metrics = {
            "method": run.method,
            "selection": f"best {metric} on valid" if selected else "final weights",
            "seed": run.seed,
            "train_seconds": result.train_seconds,
            "valid": result.valid_metrics,
            "select_metric": metric,
            **facts,
        }
        if main:
            save_pretrained(result.model, run.path / "model", saved_config(cfg.model))
            if "b_hat" in result.info:
                write_text_atomic(
                    run.path / "pseudo_bias.csv", _pseudo_bias_csv(train, result.info["b_hat"])
                )
            run.finish(metrics)
    return metrics


def check_model(cfg: RunConfig) -> None:
    """Build the model once, before anything is written: a missing, pickled, unreadable
    or ill-fitting ``model.backbone_weights`` file is an :class:`InputError` here, not
    after the run folder was created. The global RNG is left as it was (every stage
    seeds its own model, :func:`pbbl_cxr.methods.base.fresh_model`)."""
    if not cfg.model.backbone_weights:
        return
    if not Path(cfg.model.backbone_weights).is_file():
        raise InputError(cfg.model.backbone_weights, "backbone weights file not found")
    with torch.random.fork_rng(devices=[]):
        build_model(cfg.model)
