"""Dataclass configs: paper defaults in code, a YAML file over them, ``--set`` over that.

The resolved config is what every run saves to ``config.json``; loading it back
gives an equal object (:func:`config_from_dict`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medcommon.errors import InputError

T = TypeVar("T")

PRESETS = ("tiny", "demo", "small", "full")
"""``tiny`` runs in seconds (tests); ``demo`` shows the paper's central claim in a few minutes
(all four packages within 10 minutes on a 2-core CPU); ``small`` is the full benchmark with all
baselines and seeds within 15 minutes on a 2-core CPU; ``full`` is paper scale (GPU, real data)."""


def check_preset(preset: str) -> str:
    """Return ``preset`` if it is one of :data:`PRESETS`; else an :class:`InputError` on ``--preset``."""
    if preset not in PRESETS:
        raise InputError("--preset", f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return preset


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: Any, tp: Any, field: str) -> Any:
    """Convert ``value`` (a string from the command line, or a YAML scalar) to type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (
            isinstance(value, str) and value.lower() in {"none", "null", ""}
        )
        if is_null and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, field)
            except InputError as exc:
                errors.append(exc.problem)
        raise InputError(field, "; ".join(errors) or f"cannot parse {value!r}")
    if origin is typing.Literal:
        for option in args:
            if str(option) == str(value):
                return option
        raise InputError(field, f"{value!r} is not one of {', '.join(map(str, args))}")
    if origin in (tuple, list):
        items = value
        if isinstance(value, str):
            text = value.strip()
            if text[:1] + text[-1:] in (
                "[]",
                "()",
            ):  # YAML/Python-style brackets, as users type them
                text = text[1:-1]
            items = [v.strip().strip("'\"") for v in text.split(",") if v.strip()]
        if not isinstance(items, (list, tuple)):
            items = [items]
        item_type = args[0] if args else str
        coerced = [_coerce(v, item_type, field) for v in items]
        return tuple(coerced) if origin is tuple else coerced
    if dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return config_from_dict(tp, value, prefix=f"{field}.")
        raise InputError(field, f"expected a mapping for {tp.__name__}")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value) if not isinstance(value, str) else int(value.strip())
        if tp is float:
            number = float(value)
            if not math.isfinite(number):  # nan/inf parse, then poison a run at its first step
                raise InputError(field, f"must be a finite number, got {value!r}")
            return number
        if tp is str:
            return str(value)
        if tp is Path:
            return Path(value)
    except InputError:
        raise
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp))
        raise InputError(field, f"cannot parse {value!r} as {name}") from None
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def config_from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a mapping; unknown keys are an :class:`InputError`."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise InputError(
            f"{prefix}{unknown[0]}",
            f"unknown config field; valid fields: {', '.join(sorted(types_))}",
        )
    kwargs = {k: _coerce(v, types_[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) dataclass config; tuples become lists."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return convert(cfg)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"--set {key}", f"{part} is not a nested config")
    node[parts[-1]] = value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn ``["lr=1e-4", "model.width=8"]`` into a nested dict of strings."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item}", "expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise InputError(f"--set {item}", "empty key")
        _set_dotted(tree, key, value)
    return tree


def merge_mappings(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, nested mappings merged key by key (neither is changed)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_mappings(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml_mapping(path: str | Path, what: str, of: str) -> dict[str, Any]:
    """A YAML file holding a mapping (empty: ``{}``); any other content is an :class:`InputError`.

    ``what`` names the file in the not-found message, ``of`` what the mapping holds.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, Mapping):
        raise InputError(path, f"expected a mapping of {of}")
    return dict(loaded)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted names of the fields that differ between two configs as dicts
    (:func:`config_to_dict`), e.g. ``["model.width", "steps"]``."""
    a, b = _flat(old), _flat(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def resolve_config(
    cls: type[T],
    *,
    base: T | Mapping[str, Any] | None = None,
    file: str | Path | None = None,
    overrides: Iterable[str] = (),
    changeable: Iterable[str] | None = None,
    where: str = "",
) -> T:
    """Defaults (or ``base``) <- YAML ``file`` <- ``--set key=value`` overrides.

    ``base`` is a ``cls`` instance or its :func:`config_to_dict` form (whose errors
    start with ``where``, e.g. the file it was read from). ``changeable``
    (dotted field names) restricts what the file and overrides may change from
    ``base``, as when a run is resumed; None allows everything.

    Raises:
        InputError: the file is unreadable or not a mapping, a key or value is invalid,
            or a field outside ``changeable`` changes.
    """
    if isinstance(base, Mapping):
        base = config_from_dict(cls, base, prefix=where)
    data = config_to_dict(base if base is not None else cls())
    if file is not None:
        data = merge_mappings(data, read_yaml_mapping(file, "config file", "config fields"))
    sets = parse_overrides(overrides)
    for key in sets:
        if key not in data:
            raise InputError(
                f"--set {key}", f"unknown config field; valid fields: {', '.join(sorted(data))}"
            )
    data = merge_mappings(data, sets)
    resolved = config_from_dict(cls, data)
    if changeable is not None:
        allowed = set(changeable)
        before = config_to_dict(base if base is not None else cls())
        fixed = [k for k in changed_fields(before, config_to_dict(resolved)) if k not in allowed]
        if fixed:
            may = ", ".join(sorted(allowed)) or "nothing"
            raise InputError(
                f"--set {fixed[0]}", f"cannot change a resumed run's setting (only {may})"
            )
    return resolved


def replace_nested(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that reaches into nested dataclass fields.

    A change to a nested dataclass field may be a mapping of its own changes
    (``model={"width": 8}``) or a dotted keyword written through ``**``
    (``**{"model.width": 8}``); a dataclass value replaces the field whole.

    Example::

        replace_nested(cfg, lr=1e-3, model={"width": 8}, **{"pga.alpha": 0.1})
    """
    grouped: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            grouped.setdefault(head, {})
            if not isinstance(grouped[head], dict):
                raise TypeError(f"{key}: {head} is given both whole and by field")
            grouped[head][rest] = value
        elif isinstance(value, Mapping) and isinstance(grouped.get(head), dict):
            grouped[head].update(value)
        else:
            grouped[head] = dict(value) if isinstance(value, Mapping) else value
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(grouped) - names)
    if unknown:
        raise TypeError(f"{type(cfg).__name__} has no field {unknown[0]!r}")
    resolved = {}
    for key, value in grouped.items():
        current = getattr(cfg, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            value = replace_nested(current, **value)
        resolved[key] = value
    return dataclasses.replace(cfg, **resolved)
