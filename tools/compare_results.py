"""Compare two benchmark ``results.json`` files metric by metric: ``python tools/compare_results.py A B``.

Rows are matched by their identifying fields (setting, method, seed, fold, scenario);
every numeric value under ``metrics`` (nested dicts flattened with dots) is compared.
Timings (names holding ``seconds``, ``per_second``, ``time`` or ``peak``) are skipped:
they measure the machine, not the method. Claims are compared by their verdicts.

Prints the largest absolute difference, the rows and metrics that differ, and exits
1 when any difference exceeds ``--tolerance`` (default 0: bit-identical), or when a
row or claim is missing on one side.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

ROW_KEYS = ("setting", "scenario", "method", "seed", "fold")
TIMING = ("seconds", "per_second", "time", "peak")


def _load(path: Path) -> dict[str, Any]:
    path = path / "results.json" if path.is_dir() else path
    return json.loads(path.read_text(encoding="utf-8"))


def _flat(d: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix[:-1]] = float(d)
    return out


def _rows(results: dict[str, Any]) -> dict[tuple, dict[str, float]]:
    rows = {}
    for row in results.get("rows", []):
        key = tuple((k, row[k]) for k in ROW_KEYS if k in row)
        metrics = _flat(row.get("metrics", {}))
        rows[key] = {k: v for k, v in metrics.items() if not any(t in k for t in TIMING)}
    return rows


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``{"max_abs", "differences": [(row, metric, a, b)], "missing": [...], "claims": [...]}``."""
    ra, rb = _rows(a), _rows(b)
    missing = [f"row {dict(k)} only in {'A' if k in ra else 'B'}" for k in ra.keys() ^ rb.keys()]
    diffs, worst = [], 0.0
    for key in ra.keys() & rb.keys():
        for name in sorted(ra[key].keys() | rb[key].keys()):
            x, y = ra[key].get(name), rb[key].get(name)
            if x is None or y is None:
                missing.append(f"{dict(key)} {name} only in {'A' if y is None else 'B'}")
                continue
            if math.isnan(x) and math.isnan(y):
                continue
            d = abs(x - y) if math.isfinite(x) and math.isfinite(y) else math.inf
            if d > 0:
                diffs.append((dict(key), name, x, y))
                worst = max(worst, d)
    ca = {c["claim"] + str(c.get("setting")): c["holds"] for c in a.get("claims", [])}
    cb = {c["claim"] + str(c.get("setting")): c["holds"] for c in b.get("claims", [])}
    claims = [
        f"claim {k!r}: A {ca.get(k)} / B {cb.get(k)}"
        for k in sorted(ca.keys() | cb.keys())
        if ca.get(k) != cb.get(k)
    ]
    return {"max_abs": worst, "differences": diffs, "missing": missing, "claims": claims}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.0)
    parser.add_argument("--show", type=int, default=10, help="differences to list")
    args = parser.parse_args()
    res = compare(_load(args.a), _load(args.b))
    n_rows = len(_rows(_load(args.a)))
    print(
        f"{n_rows} rows; largest absolute difference {res['max_abs']:.3g}; "
        f"{len(res['differences'])} metric values differ; {len(res['claims'])} claim verdicts differ"
    )
    for row, name, x, y in sorted(res["differences"], key=lambda t: -abs(t[2] - t[3]))[
        : args.show
    ]:
        print(f"  {row} {name}: {x!r} vs {y!r}")
    for line in [*res["missing"], *res["claims"]]:
        print(f"  {line}")
    bad = res["max_abs"] > args.tolerance or res["missing"] or res["claims"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
