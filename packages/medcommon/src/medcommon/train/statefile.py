"""Training state without pickle: tensors in safetensors, everything else in JSON.

An optimizer's, scheduler's or method's ``state_dict`` is a tree of dicts (with int or
str keys), lists, tuples, numbers, strings, None and tensors. :func:`save_state` writes
it as two files: ``<stem>.safetensors`` with every tensor, and ``<stem>.json`` with the
tree, each tensor replaced by a reference to its name. :func:`load_state` reads it
back with ``safetensors`` and ``json`` only, so a checkpoint a user hands us can hold
no code: nothing here ever unpickles.

Encoding of what JSON lacks: a dict is ``{"__dict__": [[key, value], ...]}`` (keys
keep their int/str type), a tuple ``{"__tuple__": [...]}``, a tensor
``{"__tensor__": "t7"}``, a non-finite float ``{"__float__": "nan"}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medcommon.errors import InputError


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if torch.is_tensor(obj):
        name = f"t{len(tensors)}"
        t = obj.detach().cpu().contiguous()
        # safetensors refuses two entries over one storage (e.g. a view kept twice)
        shared = any(t.untyped_storage().data_ptr() == u.untyped_storage().data_ptr()
                     for u in tensors.values() if u.numel() and t.numel())  # fmt: skip
        tensors[name] = t.clone() if shared else t
        return {"__tensor__": name}
    if isinstance(obj, dict):
        pairs = []
        for k, v in obj.items():
            if not isinstance(k, (int, str)) or isinstance(k, bool):
                raise TypeError(f"state key {k!r} is neither int nor str")
            pairs.append([k, _encode(v, tensors)])
        return {"__dict__": pairs}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": str(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__dict__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__float__" in obj:
        return float(obj["__float__"])
    raise ValueError(f"unknown entry {sorted(obj)[:3]}")


def save_state(obj: Any, stem: Path) -> None:
    """Write ``obj`` as ``stem.json`` + ``stem.safetensors`` (see the module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(obj, tensors)
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(tree), encoding="utf-8")


def load_state(stem: Path) -> Any:
    """Read what :func:`save_state` wrote; a missing or damaged pair is an :class:`InputError`."""
    tree_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for path in (tree_path, tensor_path):
        if not path.is_file():
            raise InputError(path, "training state file missing")
    try:
        tensors = load_file(str(tensor_path))
        return _decode(json.loads(tree_path.read_text(encoding="utf-8")), tensors)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(stem, f"unreadable training state ({str(exc).splitlines()[0]})") from None


__all__ = ["load_state", "save_state"]
