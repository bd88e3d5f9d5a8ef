"""Release check: all packages share one version and method packages pin medcommon to it.

Usage: ``python tools/check_release.py``; exit code 1 with one line per problem.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    projects = {}
    for pyproject in sorted((ROOT / "packages").glob("*/pyproject.toml")):
        projects[pyproject.parent.name] = tomllib.loads(pyproject.read_text(encoding="utf-8"))[
            "project"
        ]
    problems = []
    core = projects.get("medcommon")
    if core is None:
        print("packages/medcommon: missing")
        return 1
    version = core["version"]
    init = (ROOT / "packages/medcommon/src/medcommon/__init__.py").read_text(encoding="utf-8")
    if f'__version__ = "{version}"' not in init:
        problems.append(f"medcommon: __version__ in __init__.py differs from pyproject {version}")
    for name, project in projects.items():
        if project["version"] != version:
            problems.append(
                f"{name}: version {project['version']} differs from medcommon {version}"
            )
        if name == "medcommon":
            continue
        pins = [d for d in project.get("dependencies", []) if re.match(r"medcommon\b", d)]
        if pins != [f"medcommon=={version}"]:
            problems.append(f"{name}: must depend on exactly medcommon=={version}, has {pins}")
        siblings = [
            d
            for d in project.get("dependencies", [])
            for s in projects
            if s != "medcommon" and d.replace("-", "_").startswith(s)
        ]
        if siblings:
            problems.append(f"{name}: depends on sibling packages {siblings}")
        if not project.get("scripts"):
            problems.append(f"{name}: no console script")
    for p in problems:
        print(p)
    if not problems:
        print(f"ok: {len(projects)} packages at version {version}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
