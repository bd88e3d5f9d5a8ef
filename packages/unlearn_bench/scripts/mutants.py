"""Mutation testing of the loss/method/metric wiring: one-line edits, one at a time.

Each mutant is ``(file, line number, old text, new text)``: the generic operator
mutations below applied to every code line of ``losses.py``, ``methods/*.py`` and the
metric part of ``evaluate.py`` (plus the named mutations of issue 13 in ``data.py`` and
``medcommon/metrics/privacy.py``). For each, the fast tests of that file run with
``-x``; a mutant is *killed* when they fail. Usage (from the repository root, with the
worktree's src folders on PYTHONPATH)::

    python packages/unlearn_bench/scripts/mutants.py [--only SUBSTRING] [--list]

Prints one line per mutant and the kill rate; writes the results to ``--out``
(``--rerun FILE`` runs only the survivors of an earlier results file). The files are restored after every mutant (and on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PKG = ROOT / "packages/unlearn_bench"
SRC = PKG / "src/unlearn_bench"
TESTS = {
    "losses": ["test_losses.py", "test_methods.py", "test_data.py"],
    "methods": ["test_methods.py", "test_losses.py"],
    "evaluate": ["test_metrics.py", "test_ues.py"],
    "data": ["test_data.py", "test_methods.py"],
    "privacy": ["test_metrics.py"],
}
# generic one-token mutations (the first match on a line), as open-unlearning-style
# wiring bugs: signs, reductions, shifts, masks, comparisons
RULES = [
    (r" - ", " + "),
    (r" \+ ", " - "),
    (r"= -", "= "),
    (r"\(-", "("),
    (r"!= -100", "== -100"),
    (r"\.mean\(\)", ".sum()"),
    (r"\[:, :-1\]", "[:, 1:]"),
    (r"\[:, 1:\]", "[:, :-1]"),
    (r"\bmin\(", "max("),
    (r"\bmax\(", "min("),
    (r" > ", " >= "),
    (r" < ", " <= "),
    (r"\* 2\.0", "* 1.0"),
    (r"\.exp\(\)", ""),
    (r"dim=-1", "dim=0"),
    (r"\bnot ", ""),
]
# the named mutations of issue 13 (file, old, new)
NAMED = [
    ("methods/grad_diff.py", "-self.cfg.gamma * forget_nll", "self.cfg.gamma * forget_nll"),
    ("methods/kl_min.py", "-self.cfg.gamma * forget_nll", "self.cfg.gamma * forget_nll"),
    (
        "methods/kl_min.py",
        "kl_ref_theta(self.ref_forward(r).logits, out_r.logits,",
        "kl_ref_theta(out_r.logits, self.ref_forward(r).logits,",
    ),
    ("losses.py", "-F.logsigmoid(-beta * avg - delta)", "-F.logsigmoid(beta * avg - delta)"),
    (
        "methods/npo.py",
        "npo_loss(lp, lp_ref, self.cfg.beta)",
        "npo_loss(lp_ref, lp, self.cfg.beta)",
    ),
    (
        "methods/npo.py",
        "self.ref_forward(f).logits",
        "outs[0].logits",
    ),
    (
        "losses.py",
        "kl = (lp_ref.exp() * (lp_ref - lp)).sum(-1)",
        "kl = (lp.exp() * (lp - lp_ref)).sum(-1)",
    ),
    ("losses.py", "mask = target != -100", "mask = torch.ones_like(target, dtype=torch.bool)"),
    (
        "data.py",
        "labels = torch.full((len(items), n), -100, dtype=torch.long)",
        "labels = torch.full((len(items), n), pad_id, dtype=torch.long)",
    ),
    (
        "data.py",
        'ans_ids = [*ans["input_ids"], self.tokenizer.eos_token_id]',
        'ans_ids = [*ans["input_ids"]]',
    ),
    ("privacy.py", "return (model - ref) / ref * 100.0", "return (ref - model) / ref * 100.0"),
    (
        "privacy.py",
        "model, ref = 1.0 - float(auc_model), 1.0 - float(auc_retrain)",
        "model, ref = float(auc_model), float(auc_retrain)",
    ),
    ("evaluate.py", 'res["loss"] = -res["nll"]', 'res["loss"] = res["nll"]'),
    (
        "evaluate.py",
        "mia_auc(f_scores[attack], g_scores[attack][same])",
        "mia_auc(g_scores[attack][same], f_scores[attack])",
    ),
]


def _path(rel: str) -> Path:
    if rel == "privacy.py":
        return ROOT / "packages/medcommon/src/medcommon/metrics/privacy.py"
    return SRC / rel


def _group(rel: str) -> str:
    if rel.startswith("methods/"):
        return "methods"
    return Path(rel).stem


def _code_lines(path: Path, rel: str):
    """(number, line) of the lines to mutate: code, not docstrings/comments/imports."""
    lines = path.read_text().splitlines()
    in_doc = False
    start, stop = 0, len(lines)
    if rel == "evaluate.py":  # the metric part: from token_stats to task_table, not run loading
        text = [ln.strip() for ln in lines]
        start = next(i for i, ln in enumerate(text) if ln.startswith("def token_stats"))
        stop = next(i for i, ln in enumerate(text) if ln.startswith("def evaluate_run"))
    for i in range(start, stop):
        ln = lines[i]
        s = ln.strip()
        if s.startswith(('"""', "'''")) or (s.endswith('"""') and in_doc):
            quotes = s.count('"""') + s.count("'''")
            if quotes == 1 or (in_doc and quotes >= 1):
                in_doc = not in_doc
            continue
        if in_doc or not s or s.startswith(("#", "import ", "from ", "@", "def ", "class ")):
            continue
        yield i, ln


def generate() -> list[dict]:
    files = [
        "losses.py",
        *(f"methods/{p.name}" for p in sorted((SRC / "methods").glob("*.py"))),
        "evaluate.py",
    ]
    out = []
    for rel in files:
        if rel in ("methods/__init__.py", "methods/base.py"):
            continue
        path = _path(rel)
        for i, ln in _code_lines(path, rel):
            code = ln.split("  #")[0]
            for pat, rep in RULES:
                m = re.search(pat, code)
                if m:
                    new = ln[: m.start()] + re.sub(pat, rep, ln[m.start() :], count=1)
                    out.append(
                        {"file": rel, "line": i + 1, "old": ln, "new": new, "kind": "generic"}
                    )
    for rel, old, new in NAMED:
        lines = _path(rel).read_text().splitlines()
        hits = [i for i, ln in enumerate(lines) if old in ln]
        assert len(hits) == 1, (rel, old, hits)
        i = hits[0]
        out.append(
            {
                "file": rel,
                "line": i + 1,
                "old": lines[i],
                "new": lines[i].replace(old, new),
                "kind": "named",
            }
        )
    return out


def run_one(m: dict) -> tuple[bool, float]:
    path = _path(m["file"])
    original = path.read_text()
    lines = original.splitlines(keepends=True)
    assert lines[m["line"] - 1].rstrip("\n") == m["old"]
    lines[m["line"] - 1] = m["new"] + "\n"
    t0 = time.time()
    try:
        path.write_text("".join(lines))
        tests = [str(PKG / "tests" / t) for t in TESTS[_group(m["file"])]]
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow and not gpu",
            *tests,
        ]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        killed = proc.returncode != 0
    except subprocess.TimeoutExpired:
        killed = True
    finally:
        path.write_text(original)
    return killed, time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--out", default="/tmp/unlearn-mutants.json", help="results file")
    ap.add_argument("--rerun", help="a mutants.json: run only the mutants that survived there")
    args = ap.parse_args()
    mutants = [m for m in generate() if args.only in m["file"]]
    if args.rerun:
        old = json.loads(Path(args.rerun).read_text())
        alive = {(r["file"], r["new"]) for r in old if not r["killed"]}
        mutants = [m for m in mutants if (m["file"], m["new"]) in alive]
    if args.list:
        for m in mutants:
            print(f"{m['file']}:{m['line']}: {m['new'].strip()}")
        print(len(mutants), "mutants")
        return 0
    results = []
    for k, m in enumerate(mutants):
        killed, secs = run_one(m)
        results.append({**m, "killed": killed})
        tag = "killed  " if killed else "SURVIVED"
        print(
            f"[{k + 1}/{len(mutants)}] {tag} {m['file']}:{m['line']} ({secs:.0f}s): {m['new'].strip()}",
            flush=True,
        )
    n_killed = sum(r["killed"] for r in results)
    named = [r for r in results if r["kind"] == "named"]
    print(
        f"killed {n_killed}/{len(results)} = {n_killed / max(len(results), 1):.1%}; named {sum(r['killed'] for r in named)}/{len(named)}"
    )
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
