"""Mutation testing of PGA, SMD and the strategies: one-line edits, one at a time.

Each mutant is ``(file, line number, old text, new text)``: the generic operator
mutations below applied to every code line of ``pga.py``, ``smd.py`` and
``strategies/*.py``, plus named mutations of the alignment maths (an estimator's branch
dropped, a Hessian role swapped, the measurement's reference changed) and the five SMD
breaks of issue #12 (training target swapped, DDIM reading another prediction type, the
mask channel dropped, no noise added in training, the mask threshold inverted). For each, the fast tests of that
file's group run with ``-x`` (cheapest first); a mutant is *killed* when they fail.
Usage (from the repository root, the worktree's src folders on PYTHONPATH,
OMP_NUM_THREADS=1)::

    python packages/smg_learning/scripts/mutants.py [--only SUBSTRING] [--list] [--out F]

Prints one line per mutant and the kill rate; writes the results to ``--out``;
``--rerun F`` runs only the survivors recorded in an earlier results file. The runner
is :mod:`medcommon.mutation`'s: each mutant edits a copy of the sources, never the
working tree (an earlier in-place runner once left a live mutant in a commit).
"""

from __future__ import annotations

from pathlib import Path

from medcommon.mutation import Mutant, main, regex_mutants

ROOT = Path(__file__).resolve().parents[3]
PKG = ROOT / "packages/smg_learning"
SRC = PKG / "src/smg_learning"
# cheapest first; node ids keep the run cheap (the DDP file's sizes test, the CLI
# file's per-strategy step contract)
TESTS = {
    "pga": [
        "test_pga.py",
        "test_alignment.py",
        "test_strategy_steps.py",
        "test_ddp.py::test_pga_with_sizes_equals_pga_on_concatenated_domains",
    ],
    "smd": ["test_smd.py"],
    "strategies": [
        "test_alignment.py",
        "test_strategy_steps.py",
        "test_cli.py::TestStrategySteps",
        "test_baselines.py",
    ],
}
# generic one-token mutations (the first match on a line)
RULES = [
    (r" - ", " + "),
    (r" \+ ", " - "),
    (r" \* ", " / "),
    (r"\.detach\(\)", ""),
    (r"\.sqrt\(\)", ""),
    (r"\bbeta_mem\b", "beta_gen"),
    (r"\bbeta_gen\b", "beta_mem"),
    (r"\bmin\(", "max("),
    (r"\bmax\(", "min("),
    (r" > ", " >= "),
    (r" < ", " <= "),
    (r" == ", " != "),
    (r"\bnot ", ""),
    (r"\bTrue\b", "False"),
    (r"\[1\]", "[0]"),
    (r"\bsync\(", "("),
]
# named mutations of the alignment maths (file, old, new)
NAMED = [
    ("pga.py", "disp(g_rep))", "disp(g_cur))"),
    ("pga.py", "axpy(G, beta_mem, [a - b for a, b in zip(g_cur2, g_cur)])", "pass"),
    ("pga.py", "axpy(G, beta_gen, [a - b for a, b in zip(g_mtr2, g_mtr)])", "pass"),
    ("pga.py", "axpy(G0, beta_gen, g_mte)", "pass"),
    ("pga.py", "axpy(G0, beta_mem, g_rep)", "pass"),
    ("pga.py", "return [inner_lr * g for g in grads]", "return [g for g in grads]"),
    (
        "pga.py",
        'out.append(state["exp_avg_sq"].detach() / (1 - beta2[id(p)] ** t))',
        'out.append(state["exp_avg_sq"].detach())',
    ),
    ("pga.py", "math.sqrt(count)", "1.0"),
    ("pga.py", "if symmetric or measure:", "if symmetric:"),
    ("pga.py", "align_share=align / update", "align_share=align"),
    ("pga_real.py", 'if cfg.pga.virtual_step == "adam"', "if False"),
    ("pga_real.py", "virtual_step=cfg.pga.virtual_step,", 'virtual_step="sgd",'),
    ("pga_real.py", "estimator=cfg.pga.estimator,", 'estimator="first_order",'),
    ("pga_real.py", "measure=cfg.pga.measure,", "measure=False,"),
    ("base.py", "stage.setdefault(name, []).append(float(value))", "pass"),
    # issue #12's five SMD breaks (each occurrence is its own mutant)
    ("smd.py", "target = noise", "target = x0"),
    ("smd.py", "target = x0", "target = noise"),
    ("smd.py", "prediction_type=self._prediction_type(),", 'prediction_type="epsilon",'),
    ("smd.py", "encode_mask(masks, self.config.mask_channels)", "images * 0 - 1"),
    ("smd.py", "decode_mask(x[:, c:], mask_threshold)", "decode_mask(x[:, :c], mask_threshold)"),
    ("smd.py", "xt = sched.add_noise(x0, noise, t)", "xt = x0"),
    ("smd.py", "return (x > threshold)", "return (x < threshold)"),
    ("smd.py", "timestep_spacing=self._timestep_spacing(),", ""),
]


TOP = ("pga.py", "smd.py")  # modules at the package's top level (the rest: strategies/)


def _path(rel: str) -> Path:
    return SRC / rel if rel in TOP else SRC / "strategies" / rel


def _group(rel: str) -> str:
    return rel.removesuffix(".py") if rel in TOP else "strategies"


def _code_lines(path: Path):
    """(number, line) of the lines to mutate: code, not docstrings/comments/imports."""
    lines = path.read_text().splitlines()
    in_doc = False
    for i, ln in enumerate(lines):
        s = ln.strip()
        quotes = s.count('"""')
        if in_doc:
            if quotes:
                in_doc = False
            continue
        if s.startswith('"""'):
            in_doc = quotes == 1
            continue
        if not s or s.startswith(("#", "import ", "from ", "@", "def ", "class ", "raise ")):
            continue
        yield i, ln


def tests_of(m: Mutant) -> list[str]:
    rel = Path(m.file).name
    return [str(PKG / "tests" / t) for t in TESTS[_group(rel)]]


def generate() -> list[Mutant]:
    files = [*TOP, *(p.name for p in sorted((SRC / "strategies").glob("*.py")))]
    root = PKG / "src"
    out = []
    for rel in files:
        if rel == "__init__.py":
            continue
        file = str(_path(rel).relative_to(root))
        out += regex_mutants(root, file, _code_lines(_path(rel)), RULES)
    for rel, old, new in NAMED:
        lines = _path(rel).read_text().splitlines()
        hits = [i for i, ln in enumerate(lines) if old in ln]
        assert hits, (rel, old)
        file = str(_path(rel).relative_to(root))
        for i in hits:  # one mutant per occurrence
            new_line = lines[i].replace(old, new)
            name = f"named: {rel}:{i + 1}: {new_line.strip()}"
            out.append(
                Mutant(str(root), file, i + 1, lines[i] + "\n", new_line + "\n", name, "named")
            )
    return out


if __name__ == "__main__":
    roots = {"medcommon": ROOT / "packages/medcommon/src", "smg": PKG / "src"}
    raise SystemExit(
        main(generate, tests_of, roots=roots, cwd=ROOT, default_out="/tmp/smg-mutants.json")
    )
