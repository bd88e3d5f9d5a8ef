"""A ``train`` run, start to finish, and its run folder (written through :mod:`medcommon.run`).

``RUN/`` holds (README "Shared contract")::

    config.json       {"schema": 1, "run": {..., "extra": {"data_options": ...}}, "config": RunConfig}
    log.jsonl         the Trainer's log, plus PBBL's pseudo-label records
    checkpoint/       per stage (PBBL: bias-r1[-fK] ... debias) for --resume
    model/            the kept classifier (config.json + model.safetensors)
    pseudo_bias.csv   PBBL only: path,label,bias,bias_hat of every train image
    metrics.json      valid metrics of the kept model, selection, timings, method facts

Runs of the earlier flat ``config.json`` (method, seed, preset, data, data_options
mixed into the config) still load with :func:`load_pbbl_run`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from medcommon.cli import require_fresh_out
from medcommon.config import config_to_dict
from medcommon.errors import InputError
from medcommon.fs import write_text_atomic
from medcommon.models import save_pretrained
from medcommon.run import Run, load_run, make_run_info, write_metrics, write_run_config
from pbbl_cxr import PACKAGE, __version__
from pbbl_cxr.config import RunConfig, resolve_select_metric
from pbbl_cxr.data import DataOptions, XrayDataset, load_split
from pbbl_cxr.distributed import is_main_process
from pbbl_cxr.methods import METHODS, RunContext, run_method
from pbbl_cxr.models import saved_config


def load_pbbl_run(path: str | Path) -> Run:
    """A pbbl-cxr run folder, current or earlier schema (another package's run is refused)."""
    return load_run(path, package=PACKAGE, config_class=RunConfig)


def _pseudo_bias_csv(train: XrayDataset, b_hat) -> str:
    lines = ["path,label,bias,bias_hat"] + [
        f"{p},{int(y)},{int(b)},{int(h)}"
        for p, y, b, h in zip(train.paths, train.labels, train.bias, b_hat)
    ]
    return "\n".join(lines) + "\n"


def train_run(
    data: str | Path,
    out: str | Path,
    *,
    method: str,
    cfg: RunConfig,
    opts: DataOptions,
    seed: int = 0,
    preset: str | None = None,
    device: str = "cpu",
    quiet: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``method`` on the dataset folder ``data`` into the run folder ``out``.

    Every input is checked (method, manifests, every image decoded, batch size, backbone
    file) before anything is written, so bad input raises :class:`InputError` and leaves
    no run folder. Returns the metrics written to ``RUN/metrics.json``.
    """
    out = Path(out)
    spec = METHODS.get(method)
    if not resume:
        require_fresh_out(out)
    if cfg.model.backbone_weights and not Path(cfg.model.backbone_weights).is_file():
        raise InputError(cfg.model.backbone_weights, "backbone weights file not found")
    train = load_split(data, "train", opts, quiet=quiet)
    valid = load_split(data, "valid", opts, quiet=quiet)
    if spec.needs_bias and not train.has_bias:
        raise InputError("--method", f"{method} needs a bias column in the train manifest")
    if cfg.batch_size > len(train):
        raise InputError(
            "--set batch_size", f"{cfg.batch_size} exceeds the {len(train)} training images"
        )
    # All inputs are valid: from here on the run folder is written.
    main = is_main_process()
    if main:
        info = make_run_info(
            PACKAGE,
            __version__,
            method=method,
            seed=seed,
            preset=preset,
            data=data,
            data_options=config_to_dict(opts),
        )
        write_run_config(out, info, cfg)
    ctx = RunContext(cfg, train, valid, out, seed, device, quiet, resume)
    result = run_method(method, ctx)
    facts = {k: v for k, v in result.info.items() if k != "b_hat"}
    # the metric the method actually selected on ("auto" resolved; PBBL reports its own)
    metric = facts.pop("select_metric", None) or resolve_select_metric(cfg.select_metric, False)
    selected = bool(metric) and metric in result.valid_metrics
    if metric and not selected and main:
        print(
            f"warning: valid split gives no {metric!r} (no bias column?): kept the final weights",
            file=sys.stderr,
        )
    metrics = {
        "method": method,
        "selection": f"best {metric} on valid" if selected else "final weights",
        "seed": seed,
        "train_seconds": result.train_seconds,
        "valid": result.valid_metrics,
        "select_metric": metric,
        **facts,
    }
    if main:
        save_pretrained(result.model, out / "model", saved_config(cfg.model))
        if "b_hat" in result.info:
            write_text_atomic(
                out / "pseudo_bias.csv", _pseudo_bias_csv(train, result.info["b_hat"])
            )
        write_metrics(out, metrics)
    return metrics
