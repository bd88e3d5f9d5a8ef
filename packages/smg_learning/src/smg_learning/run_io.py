"""A run folder read back: its config, patient split and facts (``evaluate``, ``sample``,
``predict`` and ``train --resume``).

``train`` writes the header through :func:`medcommon.run.open_run`
(:mod:`smg_learning.train`): ``config.json``'s ``run`` block holds method, seed,
preset and data, with the task, image channels, training sites and held-out sites in
``run.extra``; its ``config`` block is the resolved
:class:`~smg_learning.config.RunConfig` (sites filled in). ``split.json`` (the per-site
patient split) is a data file beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcommon.errors import InputError
from medcommon.fs import read_json
from medcommon.run import Run, load_run
from smg_learning.config import RunConfig

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
        """prostate or fundus (``run.extra``, written by ``train``)."""
        return str(self.run.info.extra.get("task", ""))


def read_split(path: str | Path) -> dict[str, Any]:
    """``RUN/split.json``: site -> ``{"train": [case ids], "test": [case ids]}``."""
    file = Path(path) / SPLIT_FILE
    if not file.is_file():
        raise InputError(path, f"not a run folder (no {SPLIT_FILE})")
    return read_json(file, SPLIT_FILE)


def read_run(path: str | Path, need_split: bool = True) -> SavedRun:
    """Read a run folder of this package (:func:`medcommon.run.load_run`)."""
    run = load_run(path, package=PACKAGE)
    split = read_split(run.path) if need_split else {}
    return SavedRun(run, run.config_as(RunConfig), split)


__all__ = ["PACKAGE", "SPLIT_FILE", "SavedRun", "read_run", "read_split"]
