"""Full training state on disk: model, optimizer, scheduler, extra state and RNGs.

Weights go to safetensors; optimizer, scheduler and extra state to ``torch.save``
files that are only ever read back with ``weights_only=True``; RNG states of all
processes to one such file. The folder is written beside its final name and
swapped in whole, so a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from medcommon.errors import InputError
from medcommon.fs import atomic_dir, read_json

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
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        for name, obj in extra.items():
            torch.save(obj.state_dict(), tmp / f"state-{name}.pt")
        torch.save(rng_states, tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n", encoding="utf-8")


def read_trainer_state(directory: Path) -> dict[str, Any] | None:
    """The ``trainer_state.json`` of a checkpoint folder, or None if there is no checkpoint."""
    path = directory / STATE_FILE
    return read_json(path) if path.is_file() else None


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(
    directory: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    extra: dict[str, Any],
) -> list[dict[str, Any]]:
    """Restore model, optimizer, scheduler and extra state in place; return the RNG states."""
    try:
        load_model(model, str(directory / "model.safetensors"), strict=True)
        optimizer.load_state_dict(_load(directory / "optimizer.pt"))
        if scheduler is not None:
            scheduler.load_state_dict(_load(directory / "scheduler.pt"))
        for name, obj in extra.items():
            obj.load_state_dict(_load(directory / f"state-{name}.pt"))
        return _load(directory / "rng.pt")
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise InputError(
            directory, f"cannot resume from this checkpoint ({str(exc).splitlines()[0]})"
        ) from None
