"""The run folder's header, through :mod:`medcommon.run` (the one schema of every package).

``config.json`` is written by :func:`medcommon.run.write_run_config`: the ``run`` block
holds method, seed, preset and data, with the task, image channels, training sites and
held-out sites in ``run.extra``; the ``config`` block the resolved
:class:`~smg_learning.config.RunConfig` (sites filled in). ``split.json`` (the per-site
patient split) is a data file beside it. :func:`open_run` is how ``--resume``,
``evaluate``, ``sample`` and ``predict`` read a run back, including runs of the earlier
layout (a pure config plus ``run.json``), which :func:`medcommon.run.load_run` reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcommon.errors import InputError
from medcommon.fs import read_json, write_json_atomic
from medcommon.run import Run, load_run, make_run_info, write_run_config
from smg_learning import __version__
from smg_learning.config import RunConfig
from smg_learning.data import ContinualData

PACKAGE = "smg-learning"
SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class SavedRun:
    """A run folder read back: the :class:`~medcommon.run.Run`, its config and split."""

    run: Run
    cfg: RunConfig
    split: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def sites(self) -> list[str]:
        return list(self.cfg.sites)

    @property
    def heldout(self) -> list[str]:
        return list(self.cfg.heldout)

    @property
    def task(self) -> str:
        """prostate or fundus (``run.extra``; the config's task when it was not ``auto``)."""
        return str(self.run.info.extra.get("task") or self.cfg.task)

    @property
    def channels(self) -> int | None:
        c = self.run.info.extra.get("channels")
        return None if c is None else int(c)


def write_run_header(
    out: Path,
    cfg: RunConfig,
    data: ContinualData,
    *,
    method: str,
    seed: int,
    preset: str,
    data_dir: str | Path,
) -> RunConfig:
    """``config.json`` and ``split.json`` of a new run; returns the config as written."""
    resolved = dataclasses.replace(cfg, sites=tuple(data.sites), heldout=tuple(data.heldout))
    info = make_run_info(
        PACKAGE,
        __version__,
        method=method,
        seed=seed,
        preset=preset,
        data=data_dir,
        task=data.task,
        channels=data.channels,
        sites=list(data.sites),
        heldout=list(data.heldout),
    )
    write_run_config(out, info, resolved)
    write_json_atomic(Path(out) / SPLIT_FILE, data.split)
    return resolved


def _migrate_pga_order(config: dict[str, Any]) -> None:
    """Runs written before issue #12 saved ``pga.order`` (``first``/``exact``) and none of
    ``pga.estimator``/``virtual_step``: read them as the estimator they ran with."""
    pga = config.get("pga")
    if isinstance(pga, dict) and "order" in pga and "estimator" not in pga:
        order = pga.pop("order")
        pga["estimator"] = {"first": "first_order"}.get(order, order)


def open_run(path: str | Path, need_split: bool = True) -> SavedRun:
    """Read a run folder (current or earlier layout) with :func:`medcommon.run.load_run`."""
    run = load_run(path, package=PACKAGE, config_class=RunConfig)
    _migrate_pga_order(run.config)
    split: dict[str, Any] = {}
    if need_split:
        if not (run.path / SPLIT_FILE).is_file():
            raise InputError(run.path, f"not a run folder (no {SPLIT_FILE})")
        split = read_json(run.path / SPLIT_FILE, SPLIT_FILE)
    return SavedRun(run, run.config_as(RunConfig), split)


__all__ = ["PACKAGE", "SPLIT_FILE", "SavedRun", "open_run", "write_run_header"]
