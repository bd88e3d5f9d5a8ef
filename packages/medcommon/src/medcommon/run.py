"""The run folder: one schema for every package's ``train`` (and pipeline) commands.

A run folder holds (README "Shared contract")::

    RUN/config.json     {"schema": 1, "run": {...}, "config": {...}}
    RUN/log.jsonl       one JSON object per logged step
    RUN/model/          config.json + model.safetensors (or a Hugging Face folder)
    RUN/checkpoint/     the last full training state (for --resume)
    RUN/metrics.json    what the run measured

``config.json`` is written once, before training starts, and holds:

- ``run``: who wrote the run and how: package, version, command, method, seed,
  preset, data (absolute path), git commit of the code when it is a git checkout,
  and an ``extra`` mapping for package-specific facts (a fold, the site order);
- ``config``: the fully resolved config dataclass, as :func:`config_to_dict` gives it.

:func:`load_run` reads this schema and the four earlier ones (pbbl-cxr and
brats-grading flattened method/seed/preset into the config; smg-learning wrote a
pure config plus ``run.json``; unlearn-bench nested the config under ``"config"``
beside its facts), so runs trained with an older version still evaluate.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from medcommon.config import config_from_dict, config_to_dict
from medcommon.errors import InputError
from medcommon.fs import read_json, write_json_atomic

T = TypeVar("T")

SCHEMA = 1
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoint"

# Keys that the earlier flat schemas (pbbl-cxr, brats-grading) mixed into the config.
_LEGACY_RUN_KEYS = ("package", "version", "command", "method", "seed", "preset", "data")


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Who wrote a run and how; the ``run`` block of ``config.json``."""

    package: str
    version: str
    command: str = "train"
    method: str | None = None
    seed: int | None = None
    preset: str | None = None
    data: str | None = None
    git_commit: str | None = None
    created: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


@dataclasses.dataclass(frozen=True)
class Run:
    """A run folder as read back by :func:`load_run`.

    ``config`` is the resolved config as a plain dict; :meth:`config_as` turns it
    into the package's dataclass (unknown keys are an :class:`InputError`).
    ``schema`` is :data:`SCHEMA` for runs written by :func:`write_run_config`, and
    ``"legacy-<package>"`` for runs of the earlier schemas.
    """

    path: Path
    info: RunInfo
    config: dict[str, Any]
    schema: int | str = SCHEMA

    def config_as(self, cls: type[T]) -> T:
        """The config as the dataclass ``cls``."""
        return config_from_dict(cls, self.config, prefix=f"{self.path / CONFIG_FILE}: ")

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` of a finished run, or None while it is unfinished."""
        path = self.path / METRICS_FILE
        return read_json(path, METRICS_FILE) if path.is_file() else None


@functools.lru_cache(maxsize=8)
def git_commit(start: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``start`` (default: this file), else None.

    ``MEDAI_GIT_COMMIT`` overrides it (for CI or installed wheels). Never raises:
    a run must not fail because git is missing.
    """
    if os.environ.get("MEDAI_GIT_COMMIT"):
        return os.environ["MEDAI_GIT_COMMIT"]
    folder = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        proc = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = proc.stdout.strip()
    return sha if proc.returncode == 0 and len(sha) == 40 else None


def make_run_info(
    package: str,
    version: str,
    command: str = "train",
    *,
    method: str | None = None,
    seed: int | None = None,
    preset: str | None = None,
    data: str | Path | None = None,
    source: str | Path | None = None,
    **extra: Any,
) -> RunInfo:
    """A :class:`RunInfo` stamped with the time and the git commit of ``source``'s checkout."""
    return RunInfo(
        package=package,
        version=version,
        command=command,
        method=method,
        seed=seed,
        preset=preset,
        data=str(Path(data).resolve()) if data is not None else None,
        git_commit=git_commit(source),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra=dict(extra),
    )


def write_run_config(out: str | Path, info: RunInfo, config: Any) -> Path:
    """Write ``out/config.json`` (atomically) in the current schema; returns its path.

    ``config`` is the resolved config dataclass (or an already converted dict).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config if isinstance(config, Mapping) else config_to_dict(config)
    path = out / CONFIG_FILE
    write_json_atomic(path, {"schema": SCHEMA, "run": info.to_dict(), "config": dict(cfg)})
    return path


def write_metrics(out: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``out/metrics.json`` atomically; returns its path."""
    path = Path(out) / METRICS_FILE
    write_json_atomic(path, dict(metrics))
    return path


def load_run(path: str | Path, package: str | None = None, config_class: type | None = None) -> Run:
    """Read a run folder's ``config.json``, in the current or an earlier schema.

    Args:
        path: the run folder.
        package: the package expected to have written it; a run of another package
            is an :class:`InputError` (evaluating a brats run with pbbl-cxr).
        config_class: the package's config dataclass; with the flat earlier schemas
            it decides which keys are config fields and which are run facts.

    Raises:
        InputError: no folder, no ``config.json``, unreadable JSON, another package.
    """
    run = Path(path)
    if not run.is_dir():
        raise InputError(run, "run folder not found")
    cfg_path = run / CONFIG_FILE
    if not cfg_path.is_file():
        raise InputError(run, f"not a run folder (no {CONFIG_FILE})")
    raw = read_json(cfg_path, CONFIG_FILE)
    if not isinstance(raw, dict):
        raise InputError(cfg_path, "expected a JSON object")
    if isinstance(raw.get("run"), dict) and isinstance(raw.get("config"), dict):
        loaded = Run(
            run, _info_from_dict(raw["run"], cfg_path), raw["config"], raw.get("schema", SCHEMA)
        )
    else:
        loaded = _load_legacy(run, raw, package, config_class)
    if package is not None and loaded.info.package not in (package, "unknown"):
        raise InputError(run, f"a run of {loaded.info.package}, not of {package}")
    return loaded


def _info_from_dict(data: Mapping[str, Any], where: Path) -> RunInfo:
    names = {f.name for f in dataclasses.fields(RunInfo)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(where, f"run.{unknown[0]}: unknown run field")
    if "package" not in data or "version" not in data:
        raise InputError(where, "run block without package and version")
    return RunInfo(**{k: v for k, v in data.items()})


def _load_legacy(
    run: Path, raw: dict[str, Any], package: str | None, config_class: type | None
) -> Run:
    """The four schemas written before :data:`SCHEMA` 1 (see the module docstring)."""
    raw = dict(raw)
    side = run / "run.json"
    if side.is_file():  # smg-learning: pure config + run.json
        facts = dict(read_json(side, "run.json"))
        config = raw
        label = "legacy-smg-learning"
    elif isinstance(raw.get("config"), dict):  # unlearn-bench: facts + nested config
        config = raw.pop("config")
        facts = raw
        label = "legacy-unlearn-bench"
    else:  # pbbl-cxr, brats-grading: facts flattened into the config
        field_names = {f.name for f in dataclasses.fields(config_class)} if config_class else set()
        facts = {
            k: raw.pop(k)
            for k in list(raw)
            if (k in _LEGACY_RUN_KEYS or (config_class and k not in field_names))
            and k not in field_names
        }
        config = raw
        label = f"legacy-{package or 'flat'}"
    core = {k: facts.pop(k, None) for k in _LEGACY_RUN_KEYS}
    info = RunInfo(
        package=core["package"] or package or "unknown",
        version=core["version"] or "unknown",
        command=core["command"] or "train",
        method=core["method"],
        seed=core["seed"],
        preset=core["preset"],
        data=core["data"],
        extra=facts,
    )
    return Run(run, info, config, label)


__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_DIR",
    "SCHEMA",
    "Run",
    "RunInfo",
    "git_commit",
    "load_run",
    "make_run_info",
    "write_metrics",
    "write_run_config",
]
