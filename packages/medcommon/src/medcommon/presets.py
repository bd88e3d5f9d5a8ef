"""Presets as data files: ``packages/<pkg>/configs/<name>.yaml``, one idiom for every package.

A preset file holds one mapping per config *section* (``run``, ``synth``, ``benchmark``,
...: each package names its own), and may inherit from another file of the same folder::

    # configs/demo.yaml
    extends: small          # start from small.yaml (itself possibly extending another)
    run:
      steps: 120            # only what differs; nested sections merge key by key
      model: {width: 8}

Files whose names start with ``_`` are bases to inherit from, not presets a user picks
(``_cpu.yaml``). Every package ships the four standard presets
(:data:`medcommon.config.PRESETS`); it may ship more (pbbl-cxr's ``gbp-paper``), and
``--preset`` takes any of them. A section absent from a preset file is the
dataclass's defaults, which are the paper's values.

The folder is found beside the installed package (``<package>/configs``, put there by
the wheel's ``force-include``) or, in a source checkout, at ``packages/<pkg>/configs``.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from medcommon.config import PRESETS, config_from_dict, merge_mappings, read_yaml_mapping
from medcommon.errors import InputError

T = TypeVar("T")

EXTENDS = "extends"


def configs_folder(package: str) -> Path:
    """The ``configs`` folder of the importable package ``package`` (e.g. ``"pbbl_cxr"``)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(package)
    here = Path(spec.origin).resolve().parent
    for folder in (here / "configs", here.parents[1] / "configs"):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"{package}: no configs/ folder beside {here} (a broken install?)")


class Presets:
    """The preset files of one package.

    Example::

        PRESETS = Presets("pbbl_cxr")
        cfg = PRESETS.section("small", "run", RunConfig)   # a RunConfig
        PRESETS.names()                                    # ['demo', 'full', ..., 'tiny']
    """

    def __init__(self, package: str, folder: str | Path | None = None) -> None:
        self.package = package
        self._folder = Path(folder) if folder is not None else None

    @functools.cached_property
    def folder(self) -> Path:
        """The preset files' folder (``folder`` if given, else :func:`configs_folder`)."""
        return self._folder or configs_folder(self.package)

    def names(self) -> list[str]:
        """Every preset a user may pick (files not starting with ``_``), sorted."""
        return sorted(p.stem for p in self.folder.glob("*.yaml") if not p.stem.startswith("_"))

    def tree(self, name: str) -> dict[str, Any]:
        """The preset's sections with every ``extends`` applied (a fresh copy)."""
        if name.startswith("_") or name not in self.names():
            choices = ", ".join(_ordered(self.names()))
            raise InputError("--preset", f"unknown preset {name!r}; choose from {choices}")
        return _resolve(self.folder, name, ())

    def chain(self, name: str) -> list[str]:
        """The file names preset ``name`` is read from, itself first, then what it extends."""
        self.tree(name)  # checks the name and the chain
        names, current = [], name
        while current is not None:
            names.append(current)
            current = _read(self.folder, current).get(EXTENDS)
        return names

    def sources(self, name: str) -> list[str]:
        """Repository paths of the files preset ``name`` is read from, for provenance
        (``packages/<pkg>/configs/<file>.yaml``, installed or not)."""
        return [f"packages/{self.package}/configs/{n}.yaml" for n in self.chain(name)]

    def section(self, name: str, section: str, cls: type[T] | None = None) -> Any:
        """One section of preset ``name``: a ``cls`` instance, or a plain dict without ``cls``."""
        data = self.tree(name).get(section) or {}
        if not isinstance(data, Mapping):
            raise InputError(self.folder / f"{name}.yaml", f"{section}: expected a mapping")
        if cls is None:
            return dict(data)
        return config_from_dict(cls, data, prefix=f"{self.folder / name}.yaml: {section}.")


def _ordered(names: list[str]) -> list[str]:
    """The standard presets first, in their order of size, then the package's own."""
    return [n for n in PRESETS if n in names] + [n for n in names if n not in PRESETS]


def _read(folder: Path, name: str) -> dict[str, Any]:
    return read_yaml_mapping(folder / f"{name}.yaml", "preset file", "config sections")


@functools.lru_cache(maxsize=64)
def _cached(folder: Path, name: str, mtime: float) -> dict[str, Any]:
    return _read(folder, name)


def _resolve(folder: Path, name: str, seen: tuple[str, ...]) -> dict[str, Any]:
    if name in seen:
        raise InputError(folder / f"{name}.yaml", f"extends loops: {' -> '.join((*seen, name))}")
    path = folder / f"{name}.yaml"
    mtime = path.stat().st_mtime if path.is_file() else 0.0
    data = dict(_cached(folder, name, mtime))
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return _deep_copy(data)
    if not isinstance(parent, str):
        raise InputError(path, f"{EXTENDS}: expected one file name, got {parent!r}")
    return merge_mappings(_resolve(folder, parent, (*seen, name)), data)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


__all__ = ["EXTENDS", "Presets", "configs_folder"]
