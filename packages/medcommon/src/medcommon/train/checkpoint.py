"""Full training state on disk: model, optimizer, scheduler, extra state and RNGs.

Weights go to safetensors; the optimizer, scheduler, the method's extra state and the
RNG states of all processes go to pickle-free state files (safetensors + JSON,
:mod:`medcommon.train.statefile`), so resuming from a folder a user hands us never
runs code. The folder is written beside its final name and swapped in whole, so a
kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from medcommon.errors import InputError
from medcommon.fs import atomic_dir, read_json
from medcommon.train.statefile import load_state, save_state

STATE_FILE = "trainer_state.json"


def save_checkpoint(
    directory: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    extra: dict[str, Any],
    rng_states: list[dict[str, Any]],
    trainer_state: dict[str, Any],
) -> None:
    """Write one checkpoint folder atomically (call on the main process only)."""
    with atomic_dir(directory) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        save_state(optimizer.state_dict(), tmp / "optimizer")
        if scheduler is not None:
            save_state(scheduler.state_dict(), tmp / "scheduler")
        for name, obj in extra.items():
            save_state(obj.state_dict(), tmp / f"state-{name}")
        save_state(rng_states, tmp / "rng")
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n", encoding="utf-8")


def read_trainer_state(directory: Path) -> dict[str, Any] | None:
    """The ``trainer_state.json`` of a checkpoint folder, or None if there is no checkpoint."""
    path = directory / STATE_FILE
    return read_json(path) if path.is_file() else None


def refuse_pickles(directory: Path) -> None:
    """An :class:`InputError` if a checkpoint folder (or any stage folder under it) holds
    pickled state (``*.pt``, ``*.pth``, ``*.bin``, ``*.pkl``): checked before anything is
    read, since nothing here unpickles."""
    for path in sorted(directory.rglob("*")) if directory.is_dir() else []:
        if path.suffix in (".pt", ".pth", ".bin", ".pkl", ".pickle"):
            raise InputError(
                path,
                "pickled training state, which this version never loads (it could run "
                "code); checkpoints hold safetensors + JSON only: start the run again",
            )


def load_checkpoint(
    directory: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    extra: dict[str, Any],
) -> list[dict[str, Any]]:
    """Restore model, optimizer, scheduler and extra state in place; return the RNG states."""
    refuse_pickles(directory)
    try:
        load_model(model, str(directory / "model.safetensors"), strict=True)
        optimizer.load_state_dict(load_state(directory / "optimizer"))
        if scheduler is not None:
            scheduler.load_state_dict(load_state(directory / "scheduler"))
        for name, obj in extra.items():
            obj.load_state_dict(load_state(directory / f"state-{name}"))
        return load_state(directory / "rng")
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise InputError(
            directory, f"cannot resume from this checkpoint ({str(exc).splitlines()[0]})"
        ) from None
