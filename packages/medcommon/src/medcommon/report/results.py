"""Building, validating, saving and rendering benchmark results."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcommon.errors import InputError
from medcommon.fs import read_json, write_json_atomic, write_text_atomic
from medcommon.provenance import changed_since, provenance, source_root
from medcommon.report.claims import Claim, check_claims, claims_table, headline_count, verdict

REQUIRED_KEYS = ("package", "version", "preset", "seeds", "rows", "summary")


def _group_key(row: dict[str, Any]) -> tuple[str, str]:
    return (str(row.get("setting", "")), str(row["method"]))


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std (ddof=1) of every numeric metric per (setting, method), in row order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_group_key(row), []).append(row)
    summary = []
    for (setting, method), members in groups.items():
        names: list[str] = []
        for r in members:
            names += [k for k, v in r["metrics"].items() if _is_number(v) and k not in names]
        metrics = {}
        for name in names:
            vals = np.array(
                [r["metrics"][name] for r in members if _is_number(r["metrics"].get(name))], float
            )
            vals = vals[np.isfinite(vals)]
            if vals.size == 0:
                metrics[name] = {"mean": float("nan"), "std": float("nan"), "n": 0}
                continue
            std = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
            metrics[name] = {"mean": float(vals.mean()), "std": std, "n": int(vals.size)}
        secs = [r["train_seconds"] for r in members if _is_number(r.get("train_seconds"))]
        entry: dict[str, Any] = {"method": method, "metrics": metrics}
        if setting:
            entry["setting"] = setting
        if secs:
            entry["train_seconds"] = float(np.mean(secs))
        summary.append(entry)
    return summary


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def make_results(
    package: str,
    version: str,
    preset: str,
    seeds: Sequence[int],
    rows: Sequence[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    claims: Iterable[Claim] | None = None,
    figures: Sequence[str] = (),
    sources: Iterable[str | Path] = (),
) -> dict[str, Any]:
    """Assemble a ``results.json`` object (summary computed from ``rows``).

    ``claims`` (written in code before the run) are checked against the summary;
    every one is kept, holding or not. ``figures`` are plot file names inside the
    benchmark folder, the one a newcomer should read first leading. ``sources`` are the
    repository paths of the claims and protocol files the run used
    (:func:`medcommon.provenance.module_source`); with the git commit, a dirty tree,
    the thread count and the torch version they make the ``provenance`` block.
    """
    for i, row in enumerate(rows):
        if "method" not in row or "metrics" not in row:
            raise ValueError(f"rows[{i}] needs 'method' and 'metrics'")
    results = {
        "package": package,
        "version": version,
        "preset": preset,
        "seeds": list(seeds),
        "rows": list(rows),
        "summary": summarise(rows),
    }
    results["claims"] = check_claims(claims or (), results["summary"], results["rows"])
    if figures:
        results["figures"] = list(figures)
    if extra:
        results["extra"] = extra
    results["provenance"] = provenance(sources)
    return results


def provenance_warnings(results: dict[str, Any], root: Path | None = None) -> list[str]:
    """What a reader of ``results`` should know about where it came from: a run made from a
    dirty tree or outside a checkout, and claims or protocol files changed after its commit."""
    prov = results.get("provenance")
    if not prov:
        return ["no provenance recorded (written before provenance was kept)"]
    notes = []
    commit = prov.get("git_commit")
    if not commit:
        notes.append("run outside a git checkout: commit unknown")
    elif prov.get("git_dirty"):
        notes.append(f"run from a dirty tree at {commit[:10]}")
    root = root if root is not None else source_root()
    for path in prov.get("sources") or {}:
        if commit and changed_since(path, commit, root):
            notes.append(f"{path} changed after the run's commit {commit[:10]}")
    return notes


def write_results(directory: str | Path, results: dict[str, Any]) -> Path:
    """Write ``directory/results.json`` atomically; NaN and inf become null (strict JSON)."""
    path = Path(directory) / "results.json"
    write_json_atomic(path, _nan_to_none(results))
    return path


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and check a ``results.json`` (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise InputError(path, "no results.json here")
    data = read_json(path)
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise InputError(path, f"not a benchmark results file (missing {', '.join(missing)})")
    return data


def _fmt(stat: dict[str, Any] | None, digits: int) -> str:
    if (
        not stat
        or stat.get("mean") is None
        or (isinstance(stat["mean"], float) and math.isnan(stat["mean"]))
    ):
        return "–"
    if stat.get("n", 1) > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def markdown_table(
    results: dict[str, Any],
    metrics: Sequence[str] | None = None,
    digits: int = 3,
    setting: str | None = None,
) -> str:
    """A markdown table of mean ± std over seeds: one row per method, one column per metric."""
    summary = [s for s in results["summary"] if setting is None or s.get("setting", "") == setting]
    if metrics is None:
        metrics = []
        for s in summary:
            metrics += [m for m in s["metrics"] if m not in metrics]
    has_setting = setting is None and any(s.get("setting") for s in summary)
    head = (["setting"] if has_setting else []) + ["method", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for s in summary:
        cells = ([s.get("setting", "")] if has_setting else []) + [s["method"]]
        cells += [_fmt(s["metrics"].get(m), digits) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    directory: str | Path,
    results: dict[str, Any],
    title: str,
    sections: Iterable[tuple[str, str]] = (),
    metrics: Sequence[str] | None = None,
    spread_over: str = "seeds",
) -> Path:
    """Write ``directory/report.md``: title, run facts, the summary table, then ``sections``.

    ``spread_over`` names what the rows of one method vary over (``"seeds"``, or
    e.g. ``"folds x seeds"`` for cross-validation), for the table's caption.
    """
    seeds = ", ".join(map(str, results["seeds"]))
    parts = [
        f"# {title}\n",
        f"`{results['package']}` {results['version']}, preset `{results['preset']}`, seeds {seeds}. "
        f"Values are mean ± sample std over {spread_over}.\n",
    ]
    prov = results.get("provenance")
    if prov:
        commit = (prov.get("git_commit") or "unknown")[:10]
        state = {True: ", dirty tree", False: ""}.get(prov.get("git_dirty"), ", tree state unknown")
        parts.append(
            f"Code at commit `{commit}`{state}; {prov.get('threads')} CPU threads, "
            f"torch {prov.get('torch')}.\n"
        )
    if results.get("claims"):
        parts += [
            "## Claims (thresholds fixed in code; any written after the result says post hoc)\n",
            "Decided on the paired per-seed differences with a 95 % t-interval: a claim holds "
            "when the whole interval clears its margin, fails when it lies on the other side, "
            "and is undecided when it straddles the margin.\n",
            claims_table(results["claims"]),
        ]
    figures = results.get("figures") or []
    if figures:
        parts.append(f"![{figures[0]}]({figures[0]})\n")
    if results.get("claims"):
        parts.append("## Results\n")
    parts.append(markdown_table(results, metrics))
    for heading, body in sections:
        parts.append(f"## {heading}\n\n{body.rstrip()}\n")
    path = Path(directory) / "report.md"
    write_text_atomic(path, "\n".join(parts))
    return path


def combine_reports(paths: Sequence[str | Path], relative_to: str | Path | None = None) -> str:
    """One markdown document from several benchmark folders' ``results.json`` and plots.

    It opens with the headline table (every package's claims: does each hold?),
    then one figure per package (its first ``figures`` entry), then each package's
    summary table with its remaining figures and a link to its own report.
    Image links are relative to ``relative_to`` (the combined report's folder).
    """
    if not paths:
        raise InputError("DIR", "give at least one benchmark folder")
    loaded = [(Path(p), load_results(p)) for p in paths]
    base = Path(relative_to).resolve() if relative_to is not None else None

    def link(folder: Path, name: str) -> str:
        target = (folder / name).resolve()
        if base is None:
            return str(folder / name)
        try:
            return os.path.relpath(target, base)
        except ValueError:  # another drive (Windows)
            return str(target)

    parts = ["# Combined benchmark report\n"]
    warnings = {res["package"]: provenance_warnings(res) for _, res in loaded}
    claims = [(res["package"], c) for _, res in loaded for c in res.get("claims") or []]
    if claims:
        n_hold, n_counted = headline_count(c for _, c in claims)
        undecided = sum(
            c.get("decision") == "undecided" and not c.get("post_hoc") for _, c in claims
        )
        parts.append(
            f"## Headline: {n_hold} of {n_counted} claims hold"
            + (f" ({undecided} undecided)" if undecided else "")
            + "\n"
        )
        parts.append(
            "Each claim is decided on the paired per-seed differences (method − baseline) "
            "with a 95 % t-interval: it holds only when the whole interval clears the "
            "margin, and is undecided when the interval straddles it.\n"
        )
        post_hoc = sum(bool(c.get("post_hoc")) for _, c in claims)
        if post_hoc:
            parts.append(
                f"{post_hoc} claim(s) written after their result (post hoc) are listed, "
                "not counted.\n"
            )
        parts.append(
            "| package | claim | metric | method value | baseline value | holds |\n"
            "|---|---|---|---|---|---|"
        )
        for package, c in claims:
            value = "–" if c["value"] is None else f"{c['value']:.3f}"
            base_v = "–" if c["baseline_value"] is None else f"{c['baseline_value']:.3f}"
            where = f" ({c['setting']})" if c.get("setting") else ""
            holds = verdict(c)
            if c.get("post_hoc"):
                holds += ", not counted"
            if warnings[package]:
                holds += " †"
            parts.append(
                f"| {package} | {c['claim']}{where} | {c['metric']} | {c['method']} {value} | "
                f"{c['baseline']} {base_v} | {holds} |"
            )
        parts.append("")
    flagged = {pkg: notes for pkg, notes in warnings.items() if notes}
    if flagged:
        parts.append("† Provenance:\n")
        parts += [f"- {pkg}: {'; '.join(notes)}" for pkg, notes in flagged.items()]
        parts.append("")
    firsts = [(folder, res) for folder, res in loaded if res.get("figures")]
    if firsts:
        parts.append("## One picture per package\n")
        for folder, res in firsts:
            name = res["figures"][0]
            parts.append(
                f"**{res['package']}**\n\n![{res['package']}: {name}]({link(folder, name)})\n"
            )
    for folder, res in loaded:
        parts.append(f"## {res['package']} {res['version']} (preset `{res['preset']}`)\n")
        if (folder / "report.md").is_file():
            parts.append(
                f"Full report: [{link(folder, 'report.md')}]({link(folder, 'report.md')})\n"
            )
        parts.append(markdown_table(res))
        extra = res.get("extra") or {}
        ratios = {k: v for k, v in extra.items() if _is_number(v)}
        if ratios:
            parts.append("| measured in the same run | value |\n|---|---|")
            parts += [f"| {k} | {v:.3g} |" for k, v in ratios.items()]
            parts.append("")
        for name in (res.get("figures") or [])[1:]:
            parts.append(f"![{name}]({link(folder, name)})\n")
    return "\n".join(parts) + "\n"
