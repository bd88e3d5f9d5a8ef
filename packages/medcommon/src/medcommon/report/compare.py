"""Compare two benchmark ``results.json`` metric by metric (``medcommon compare A B``).

Rows are matched by their identifying fields (setting, method, seed, fold, scenario);
every numeric value of a row (its ``metrics`` and any other numeric field, such as a
per-stage list; nested dicts and lists flattened with dots) is compared.
Timings (names holding ``seconds``, ``per_second``, ``time`` or ``peak``) are skipped:
they measure the machine, not the method. Claims are compared by their verdicts.

:func:`compare` returns the largest absolute difference, the values that differ, rows
or metrics present on one side only, and claims whose decision differs; the
``medcommon compare`` command prints them and exits 3 when any difference exceeds
``--tolerance`` (default 0: bit-identical) or anything is missing or decided otherwise.
"""

from __future__ import annotations

import math
from typing import Any

ROW_KEYS = ("setting", "scenario", "method", "seed", "fold")
TIMING = ("seconds", "per_second", "time", "peak")


def _flat(d: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)):
        for i, v in enumerate(d):
            out.update(_flat(v, f"{prefix}{i}."))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix[:-1]] = float(d)
    return out


def _rows(results: dict[str, Any]) -> dict[tuple, dict[str, float]]:
    """Every numeric value of each row (metrics and any other numeric field, nested dicts and
    lists flattened with dots), timings left out, keyed by the row's identifying fields."""
    rows = {}
    for row in results.get("rows", []):
        key = tuple((k, row[k]) for k in ROW_KEYS if k in row)
        values = _flat({k: v for k, v in row.items() if k not in ROW_KEYS})
        rows[key] = {k: v for k, v in values.items() if not any(t in k for t in TIMING)}
    return rows


def _decision(claim: dict[str, Any]) -> str:
    return str(claim.get("decision") or ("holds" if claim.get("holds") else "fails"))


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
    ca = {c["claim"] + str(c.get("setting")): _decision(c) for c in a.get("claims", [])}
    cb = {c["claim"] + str(c.get("setting")): _decision(c) for c in b.get("claims", [])}
    claims = [
        f"claim {k!r}: A {ca.get(k)} / B {cb.get(k)}"
        for k in sorted(ca.keys() | cb.keys())
        if ca.get(k) != cb.get(k)
    ]
    return {"max_abs": worst, "differences": diffs, "missing": missing, "claims": claims}


def summary_lines(res: dict[str, Any], rows: int, show: int = 10) -> list[str]:
    """What ``medcommon compare`` prints for a :func:`compare` result."""
    lines = [
        f"{rows} rows; largest absolute difference {res['max_abs']:.3g}; "
        f"{len(res['differences'])} metric values differ; {len(res['claims'])} claim "
        "decisions differ"
    ]
    worst = sorted(res["differences"], key=lambda t: -abs(t[2] - t[3]))[:show]
    lines += [f"  {row} {name}: {x!r} vs {y!r}" for row, name, x, y in worst]
    lines += [f"  {line}" for line in [*res["missing"], *res["claims"]]]
    return lines


def row_count(results: dict[str, Any]) -> int:
    return len(_rows(results))


__all__ = ["compare", "row_count", "summary_lines"]
