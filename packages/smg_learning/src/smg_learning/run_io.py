"""The run folder's header files: what a run was (config, method, split), written and read back.

``config.json`` holds the resolved :class:`~smg_learning.config.RunConfig` (sites filled
in), ``run.json`` the method, seed, preset and task, ``split.json`` the per-site patient
split; :func:`load_run` is how ``--resume``, ``evaluate`` and ``sample`` find them again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from medcommon.config import config_from_dict, config_to_dict
from medcommon.errors import InputError
from medcommon.fs import read_json, write_json_atomic
from smg_learning import __version__
from smg_learning.config import RunConfig
from smg_learning.data import ContinualData


def write_run_header(
    out: Path, cfg: RunConfig, data: ContinualData, method: str, seed: int, preset: str
) -> None:
    """``config.json``, ``run.json`` and ``split.json`` of a new run."""
    resolved = dataclasses.replace(cfg, sites=tuple(data.sites), heldout=tuple(data.heldout))
    write_json_atomic(out / "config.json", config_to_dict(resolved))
    write_json_atomic(
        out / "run.json",
        {
            "package": "smg-learning",
            "version": __version__,
            "method": method,
            "seed": seed,
            "preset": preset,
            "task": data.task,
            "channels": data.channels,
        },
    )
    write_json_atomic(out / "split.json", data.split)


def load_run(run: str | Path) -> tuple[RunConfig, list[str], list[str], dict[str, Any]]:
    """The config, training sites, held-out sites and split saved in a run folder."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(run, "run folder not found")
    for name in ("config.json", "split.json", "run.json"):
        if not (run / name).is_file():
            raise InputError(run, f"not a run folder (no {name})")
    raw = read_json(run / "config.json")
    split = read_json(run / "split.json")
    cfg = config_from_dict(RunConfig, raw)
    return cfg, list(cfg.sites), list(cfg.heldout), split


def read_run_info(run: str | Path) -> dict[str, Any]:
    """``run.json``: package, version, method, seed, preset, task, channels."""
    return read_json(Path(run) / "run.json", "run.json")
