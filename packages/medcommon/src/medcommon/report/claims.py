"""Claims as data: what a benchmark sets out to show, written in code before it runs.

A :class:`Claim` names a method, a baseline, a metric and a threshold. After the
runs, :func:`check_claims` decides it on the **paired** per-seed differences
(method − baseline on the same seed, fold and setting), with a 95 % t-interval over
the pairs, never on one mean against a margin:

- ``holds``: the whole interval is on the claim's side of the margin;
- ``fails``: the whole interval is on the other side;
- ``undecided``: the interval straddles the margin (too few seeds for the spread), or
  fewer than two pairs exist. Noise cannot flip such a claim between runs: it stays
  undecided until more seeds narrow the interval.

A claim that does not hold is reported as not holding, never dropped:
``results.json`` carries every claim::

    "claims": [{"claim", "method", "baseline", "metric", "setting", "test", "post_hoc",
                "value", "baseline_value",             # means over the rows, for reading
                "difference", "interval", "pairs",     # the paired evidence
                "decision", "holds"}]                  # holds == (decision == "holds")

A claim written after its result is seen says so (``post_hoc=True``): it is reported,
and never counted in a headline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np

CLAIM_KEYS = frozenset(
    {"claim", "method", "baseline", "metric", "value", "baseline_value", "holds", "setting",
     "test", "post_hoc", "difference", "interval", "pairs", "decision"}
)  # fmt: skip
"""The keys every checked claim in ``results.json`` carries (``note`` is added when one
cannot be decided for want of data); packages' tests hold their claims to it."""

CONFIDENCE = 0.95
"""Two-sided level of the t-interval over paired differences."""

PAIR_FIELDS = ("seed", "fold", "scenario", "site")
"""Row fields that identify a pair besides ``setting`` (the claim's) and ``method``."""

Decision = Literal["holds", "fails", "undecided"]


@dataclasses.dataclass(frozen=True)
class Claim:
    """One comparison, decided before the run.

    Attributes:
        claim: the sentence a reader sees, e.g. "PBBL beats ERM on the conflicting group".
        method, baseline: method names as in the benchmark's rows.
        metric: a metric name in the rows' ``metrics``.
        setting: the rows' ``setting`` the claim is about (None: rows without one).
        test: on the paired differences d = method − baseline, with interval [lo, hi]:
            ``"greater"``: holds when lo > ``margin``, fails when hi < ``margin``;
            ``"less"`` (lower is better): holds when hi < −``margin``, fails when
            lo > −``margin``;
            ``"within"`` (no harm / a tie): holds when [lo, hi] ⊂ [−margin, margin],
            fails when the interval lies wholly outside it.
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


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def paired_differences(rows: Iterable[dict[str, Any]], claim: Claim) -> list[float]:
    """method − baseline of ``claim.metric`` on every pair of rows that share the claim's
    setting and the :data:`PAIR_FIELDS` (seed, fold, ...), in a stable order."""
    sides: dict[tuple, list[float | None]] = {}
    for row in rows:
        if (row.get("setting") or None) != (claim.setting or None):
            continue
        if row["method"] not in (claim.method, claim.baseline):
            continue
        value = row.get("metrics", {}).get(claim.metric)
        if not _finite(value):
            continue
        key = tuple(str(row.get(f)) for f in PAIR_FIELDS)
        pair = sides.setdefault(key, [None, None])
        pair[0 if row["method"] == claim.method else 1] = float(value)
    return [a - b for _, (a, b) in sorted(sides.items()) if a is not None and b is not None]


def interval(diffs: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The two-sided t-interval of the mean of ``diffs`` (at least two values)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    half = stats.t.ppf(0.5 + confidence / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)


def decide(claim: Claim, lo: float, hi: float) -> Decision:
    """The decision of ``claim`` given the interval [lo, hi] of method − baseline."""
    m = claim.margin
    if claim.test == "greater":
        return "holds" if lo > m else "fails" if hi < m else "undecided"
    if claim.test == "less":
        return "holds" if hi < -m else "fails" if lo > -m else "undecided"
    if -m <= lo and hi <= m:
        return "holds"
    return "fails" if lo > m or hi < -m else "undecided"


def check_claims(
    claims: Iterable[Claim],
    summary: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Each claim with its means, paired evidence and decision (module docstring)."""
    out = []
    for c in claims:
        diffs = paired_differences(rows, c)
        row: dict[str, Any] = {
            "claim": c.claim,
            "method": c.method,
            "baseline": c.baseline,
            "metric": c.metric,
            "setting": c.setting,
            "test": c.describe_test(),
            "post_hoc": c.post_hoc,
            "value": _mean(summary, c.method, c.setting, c.metric),
            "baseline_value": _mean(summary, c.baseline, c.setting, c.metric),
            "difference": float(np.mean(diffs)) if diffs else None,
            "interval": None,
            "pairs": len(diffs),
            "decision": "undecided",
            "holds": False,
        }
        assert set(row) == CLAIM_KEYS  # one schema: the row and the documented keys agree
        if len(diffs) < 2:
            row["note"] = (
                f"{len(diffs)} paired value(s) of {c.metric} for {c.method} and {c.baseline}: "
                "too few to decide"
            )
        else:
            lo, hi = interval(diffs)
            row["interval"] = [lo, hi]
            row["decision"] = decide(c, lo, hi)
            row["holds"] = row["decision"] == "holds"
        out.append(row)
    return out


def headline_count(claims: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """``(holding, counted)`` over the claims a headline may count: not ``post_hoc``."""
    counted = [c for c in claims if not c.get("post_hoc")]
    return sum(bool(c["holds"]) for c in counted), len(counted)


def _num(v: Any, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _evidence(c: dict[str, Any], digits: int) -> str:
    if c.get("difference") is None:
        return "–"
    text = f"{c['difference']:+.{digits}f}"
    if c.get("interval"):
        lo, hi = c["interval"]
        text += f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return f"{text} (n={c.get('pairs', 0)})"


def verdict(c: dict[str, Any]) -> str:
    """The claim's decision as a table cell: **yes**, no or undecided (post hoc marked)."""
    decision = c.get("decision") or ("holds" if c["holds"] else "fails")
    cell = {"holds": "**yes**", "fails": "no", "undecided": "undecided"}[decision]
    return cell + (" (post hoc)" if c.get("post_hoc") else "")


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
        f"paired difference [{CONFIDENCE:.0%} interval]",
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
            _evidence(c, digits),
            c.get("test", ""),
            verdict(c),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
