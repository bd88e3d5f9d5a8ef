"""Claims as data: what a benchmark sets out to show, written in code before it runs.

A :class:`Claim` names a method, a baseline, a metric and a threshold. After the
runs, :func:`check_claims` fills in the measured values and whether the claim
holds. A claim that does not hold is reported as not holding, never dropped:
``results.json`` carries every claim::

    "claims": [{"claim", "method", "baseline", "metric", "value",
                "baseline_value", "holds", "setting", "test", "post_hoc"}]

A claim written after its result is seen says so (``post_hoc=True``): it is reported,
and never counted in a headline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

CLAIM_KEYS = frozenset(
    {"claim", "method", "baseline", "metric", "value", "baseline_value", "holds", "setting",
     "test", "post_hoc"}
)  # fmt: skip
"""The keys every checked claim in ``results.json`` carries (``note`` is added when one is
missing a value); packages' tests hold their benchmarks' claims to it."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """One comparison, decided before the run.

    Attributes:
        claim: the sentence a reader sees, e.g. "PBBL beats ERM on the conflicting group".
        method, baseline: method names as in the benchmark's rows.
        metric: a metric name in the rows' ``metrics``.
        setting: the rows' ``setting`` the claim is about (None: rows without one).
        test: ``"greater"``: mean(method) − mean(baseline) > ``margin``;
            ``"less"``: mean(baseline) − mean(method) > ``margin`` (lower is better);
            ``"within"``: |mean(method) − mean(baseline)| ≤ ``margin`` (no harm / a tie).
        margin: the threshold, in the metric's units.
        post_hoc: written after its result was seen. Reported with its outcome, never
            counted in a headline of claims that hold (:func:`headline_count`).
    """

    claim: str
    method: str
    baseline: str
    metric: str
    setting: str | None = None
    test: Literal["greater", "less", "within"] = "greater"
    margin: float = 0.0
    post_hoc: bool = False

    def describe_test(self) -> str:
        """The threshold in words, e.g. ``"> +0.02"``, ``"within ±0.02"``."""
        if self.test == "within":
            return f"within ±{self.margin:g}"
        sign = ">" if self.test == "greater" else "<"
        return f"{sign} {'+' if self.test == 'greater' else '−'}{self.margin:g}"


def _mean(summary: Sequence[dict[str, Any]], method: str, setting: str | None, metric: str):
    for entry in summary:
        if entry["method"] == method and (entry.get("setting") or None) == (setting or None):
            stat = entry["metrics"].get(metric)
            if stat is None or stat.get("mean") is None:
                return None
            mean = float(stat["mean"])
            return mean if math.isfinite(mean) else None
    return None


def check_claims(
    claims: Iterable[Claim], summary: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each claim with its measured ``value``, ``baseline_value`` and ``holds``.

    A claim whose method or baseline has no finite value for the metric does not
    hold (``value`` or ``baseline_value`` is None), and says so in ``note``.
    """
    out = []
    for c in claims:
        value = _mean(summary, c.method, c.setting, c.metric)
        base = _mean(summary, c.baseline, c.setting, c.metric)
        row: dict[str, Any] = {
            "claim": c.claim,
            "method": c.method,
            "baseline": c.baseline,
            "metric": c.metric,
            "value": value,
            "baseline_value": base,
            "holds": False,
            "setting": c.setting,
            "test": c.describe_test(),
            "post_hoc": c.post_hoc,
        }
        assert set(row) == CLAIM_KEYS  # one schema: the row and the documented keys agree
        if value is None or base is None:
            missing = c.method if value is None else c.baseline
            row["note"] = f"no finite {c.metric} for {missing}"
        elif c.test == "greater":
            row["holds"] = value - base > c.margin
        elif c.test == "less":
            row["holds"] = base - value > c.margin
        else:
            row["holds"] = abs(value - base) <= c.margin
        out.append(row)
    return out


def headline_count(claims: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """``(holding, counted)`` over the claims a headline may count: not ``post_hoc``."""
    counted = [c for c in claims if not c.get("post_hoc")]
    return sum(bool(c["holds"]) for c in counted), len(counted)


def _num(v: Any, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def claims_table(
    claims: Sequence[dict[str, Any]], package: str | None = None, digits: int = 3
) -> str:
    """A markdown table of checked claims (``package`` adds a first column)."""
    head = (["package"] if package else []) + [
        "claim",
        "setting",
        "metric",
        "method value",
        "baseline value",
        "test",
        "holds",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for c in claims:
        cells = ([package] if package else []) + [
            c["claim"],
            c.get("setting") or "",
            c["metric"],
            f"{c['method']} {_num(c['value'], digits)}",
            f"{c['baseline']} {_num(c['baseline_value'], digits)}",
            c.get("test", ""),
            ("**yes**" if c["holds"] else "no") + (" (post hoc)" if c.get("post_hoc") else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
