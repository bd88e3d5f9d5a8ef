"""Save and load models as ``config.json`` + ``model.safetensors`` (never pickle)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_model, save_model

from medcommon.config import config_from_dict, config_to_dict
from medcommon.errors import InputError
from medcommon.fs import atomic_dir, read_json

M = TypeVar("M", bound=torch.nn.Module)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: torch.nn.Module, directory: str | Path, config: Any) -> Path:
    """Write ``directory/config.json`` and ``directory/model.safetensors`` atomically.

    Args:
        model: the module (unwrapped; DDP wrappers are removed by the caller).
        directory: the output folder; replaced as a whole once complete.
        config: a dataclass or a dict that rebuilds the model (see :func:`from_pretrained`).
    """
    directory = Path(directory)
    payload = config_to_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    payload = {"model_class": type(model).__name__, **payload}
    with atomic_dir(directory) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        # save_model handles tied/shared tensors, which plain save_file refuses.
        save_model(model, str(tmp / WEIGHTS_NAME))
    return directory


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a saved model folder, as a dict (``model_class`` included)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise InputError(directory, f"not a saved model folder (no {CONFIG_NAME})")
    return read_json(path)


def from_pretrained(
    cls: type[M], directory: str | Path, map_location: str | torch.device = "cpu"
) -> M:
    """Rebuild ``cls`` from a folder written by :func:`save_pretrained` and load its weights.

    ``cls`` is built as ``cls(config)`` when it declares a dataclass ``config_class``,
    else as ``cls(**config)``. Weight names and shapes must match exactly.
    """
    directory = Path(directory)
    config = read_model_config(directory)
    config.pop("model_class", None)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise InputError(directory, f"no {WEIGHTS_NAME} in the model folder")
    config_class = getattr(cls, "config_class", None)
    if config_class is not None and dataclasses.is_dataclass(config_class):
        model = cls(config_from_dict(config_class, config))
    else:
        model = cls(**config)
    try:
        load_model(model, str(weights), strict=True, device=str(map_location))
    except (RuntimeError, OSError) as exc:
        raise InputError(
            weights, f"weights do not fit {cls.__name__} ({str(exc).splitlines()[0]})"
        ) from None
    return model
