"""Where a result came from: the code's git commit, a dirty tree, threads, versions.

Every ``results.json`` carries :func:`provenance` (``make_results`` adds it), and every
run header the commit and dirtiness (:func:`git_state`), so that "was this claim
written before this run?" is a lookup, not an archaeology of timestamps.

The checkout is found, in this order, at ``MEDAI_SOURCE_ROOT``, at the installed
medcommon's own folder (an editable install), or at the current folder when it holds
``packages/medcommon`` (the repository root, where ``nox`` runs). Installed from a
wheel outside any checkout, the git fields are None. ``MEDAI_GIT_COMMIT`` (and
``MEDAI_GIT_DIRTY=0/1``) override what git says, for builds that have no ``.git``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


@functools.lru_cache(maxsize=4)
def _toplevel(start: str) -> Path | None:
    out = _git(Path(start), "rev-parse", "--show-toplevel")
    return Path(out.strip()) if out and out.strip() else None


def source_root() -> Path | None:
    """The git checkout the code runs from (see the module docstring), or None."""
    candidates = []
    if os.environ.get("MEDAI_SOURCE_ROOT"):
        candidates.append(Path(os.environ["MEDAI_SOURCE_ROOT"]))
    candidates.append(Path(__file__).resolve().parent)
    cwd = Path.cwd()
    if (cwd / "packages" / "medcommon").is_dir():
        candidates.append(cwd)
    for folder in candidates:
        if folder.is_dir():
            top = _toplevel(str(folder))
            if top is not None and (top / "packages" / "medcommon").is_dir():
                return top
    return None


def git_state() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the code's checkout; ``dirty`` ignores untracked files."""
    env_commit = os.environ.get("MEDAI_GIT_COMMIT")
    if env_commit:
        dirty = os.environ.get("MEDAI_GIT_DIRTY")
        return env_commit, (None if dirty is None else dirty not in ("0", "false", ""))
    root = source_root()
    if root is None:
        return None, None
    head = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    commit = head.strip() if head and len(head.strip()) == 40 else None
    return commit, (None if status is None else bool(status.strip()))


def last_commit(path: str | Path, root: Path | None = None) -> str | None:
    """The commit that last changed ``path`` (relative to the checkout), or None."""
    root = root or source_root()
    if root is None:
        return None
    out = _git(root, "log", "-1", "--format=%H", "--", str(path))
    return out.strip() or None if out else None


def changed_since(path: str | Path, commit: str, root: Path | None = None) -> bool | None:
    """Whether ``path`` has commits after ``commit`` in the checkout (None: cannot tell)."""
    root = root or source_root()
    if root is None or not commit:
        return None
    out = _git(root, "log", "--format=%H", f"{commit}..HEAD", "--", str(path))
    return None if out is None else bool(out.strip())


def module_source(module: str) -> str:
    """The repository path of a package module: ``pbbl_cxr.claims`` ->
    ``packages/pbbl_cxr/src/pbbl_cxr/claims.py`` (the same whether installed or not)."""
    parts = module.split(".")
    return "/".join(["packages", parts[0], "src", *parts]) + ".py"


def provenance(sources: Iterable[str | Path] = ()) -> dict[str, Any]:
    """The ``provenance`` block of a ``results.json``.

    ``sources``: repository paths of the claims and protocol files the run used
    (:func:`module_source` names a module's); each gets the commit that last changed it.
    """
    import torch

    commit, dirty = git_state()
    root = source_root()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "sources": {str(p): last_commit(p, root) for p in sources},
    }


__all__ = [
    "changed_since",
    "git_state",
    "last_commit",
    "module_source",
    "provenance",
    "source_root",
]


def load_beside(script: str | Path, filename: str, name: str) -> ModuleType:
    """The Python file ``filename`` next to ``script`` (a benchmark's ``protocol.py``
    beside its ``run.py``), imported once as the module ``name``.

    Benchmark folders are not packages; their protocol is a file whose git history is
    the evidence that it came before the results, so it is loaded by path.
    """
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(script).parent / filename)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
