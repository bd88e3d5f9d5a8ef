"""Source lines of every package's ``src/``, by role: ``python tools/source_lines.py [--json]``.

Roles, decided by a file's name (its folder for sub-packages), so that the count
reads the same on any checkout:

- method: the paper's method and its baselines (models, losses, objectives);
- training: loops and schedules that run a method;
- cli/config/run: console scripts, configs, presets, the run folder;
- data: readers, generators, splits;
- evaluation: metrics, evaluation and inference;
- benchmark: the ``benchmark`` command, claims, reports;
- dev tooling: test suites and mutation runners (should be 0 in a runtime package).

Lines are physical lines (``wc -l``), blank lines and docstrings included.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROLES: dict[str, tuple[str, ...]] = {
    "method": (
        "methods", "strategies", "losses", "model", "models", "mc3", "attention", "pga",
        "smd", "segmenter", "pseudo", "ues", "replay", "scale",
    ),
    "training": ("train", "continual", "distributed", "loop", "seeding", "sampling",
                 "checkpoint", "accelerator"),
    "cli/config/run": ("cli", "config", "presets", "run", "run_io", "__init__", "errors",
                       "registry", "fs", "provenance", "spec"),
    "data": ("data", "synth", "splits", "images", "mllmu", "io", "synthetic", "sample",
             "manifest", "cache", "volume", "dicom", "raster", "image"),
    "evaluation": ("evaluate", "predict", "metrics"),
    "benchmark": ("benchmark", "claims", "grid", "protocol", "memprobe", "costs", "select",
                  "report", "plots", "results", "bootstrap"),
    "dev tooling": ("testing", "mutation"),
}  # fmt: skip
_BY_NAME = {name: role for role, names in ROLES.items() for name in names}


def role_of(path: Path, src: Path) -> str:
    """The role of ``path`` (a file under ``src/<package>/``): by its sub-package, else its stem."""
    parts = path.relative_to(src).parts  # (<package>, [sub-package,] file.py)
    names = [parts[1]] if len(parts) > 2 else []
    names.append(path.stem)
    for name in names:
        if name in _BY_NAME and not (name == "__init__" and len(parts) > 2):
            return _BY_NAME[name]
    return "other"


def count(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """``{package: {role: lines}}`` over ``packages/*/src/**/*.py``."""
    table: dict[str, dict[str, int]] = {}
    for pkg in sorted((root / "packages").iterdir()):
        src = pkg / "src"
        if not src.is_dir():
            continue
        lines: dict[str, int] = defaultdict(int)
        for path in sorted(src.rglob("*.py")):
            lines[role_of(path, src)] += len(path.read_text(encoding="utf-8").splitlines())
        table[pkg.name] = dict(lines)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    table = count()
    if args.json:
        print(json.dumps(table, indent=2))
        return
    roles = [*ROLES, "other"]
    print("| package | " + " | ".join(roles) + " | total |")
    print("|---" * (len(roles) + 2) + "|")
    totals: dict[str, int] = defaultdict(int)
    for pkg, lines in table.items():
        cells = [lines.get(r, 0) for r in roles]
        for r, n in zip(roles, cells):
            totals[r] += n
        print(f"| {pkg} | " + " | ".join(map(str, cells)) + f" | {sum(cells)} |")
    all_cells = [totals[r] for r in roles]
    print("| **all** | " + " | ".join(map(str, all_cells)) + f" | {sum(all_cells)} |")


if __name__ == "__main__":
    main()
