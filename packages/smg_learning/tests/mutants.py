"""Mutation testing of PGA, SMD and the strategies: one-line edits, one at a time.

Loaded by the one runner, from the repository root (``OMP_NUM_THREADS=1``)::

    python -m medai_testkit.mutation smg_learning [--only SUBSTRING] [--list] [--out F] [--full]

Each mutant is one line of ``pga.py``, ``smd.py`` or ``strategies/*.py`` edited: the
generic rules below on every code line (:data:`RULES`, the first match of each rule,
one mutant per rule and line), plus named mutations (:data:`NAMED`) of the alignment
maths (an estimator's branch dropped, a Hessian role swapped, the measurement's
reference changed, a PGA setting ignored) and the five SMD breaks of issue #12
(training target swapped, DDIM reading another prediction type, the mask channel
dropped, no noise added in training, the mask threshold inverted). The fast tests of
the file's group (:data:`TESTS`, cheapest first) judge each; ``--full`` adds the
command-level contract and the DDP tests. Results of earlier runs:
``benchmarks/mutation/``.
"""

from __future__ import annotations

from pathlib import Path

from medai_testkit.mutation import Mutant, regex_mutants

PKG = "smg_learning"
# cheapest first; node ids keep the run cheap (the DDP file's sizes test, the CLI
# file's per-strategy step contract)
TESTS = {
    "pga": [
        "tests/test_pga.py",
        "tests/test_alignment.py",
        "tests/test_strategy_steps.py",
        "tests/test_ddp.py::test_pga_with_sizes_equals_pga_on_concatenated_domains",
    ],
    "smd": ["tests/test_smd.py"],
    "strategies": [
        "tests/test_alignment.py",
        "tests/test_strategy_steps.py",
        "tests/test_cli.py::TestStrategySteps",
        "tests/test_baselines.py",
        # PGA's virtual-step divergence check (issue #20), without training
        "tests/test_run_policy.py::test_the_virtual_step_check_passes_sane_steps_and_raises_on_every_blow_up",
        # issue #22: the probe (base.py) and the transfer shift (pga_real.py)
        "tests/test_testbed.py",
    ],
    "transfer": ["tests/test_testbed.py"],
}
#: ``--full``: the wider tests that cover what the cheap subset cannot (resume
#: bookkeeping through the CLI contract, DDP-only lines)
FULL = {
    "pga": ["tests/test_ddp.py"],
    "smd": ["tests/test_cli.py"],
    "strategies": ["tests/test_cli.py", "tests/test_ddp.py"],
}
#: generic one-token mutations (the first match on a line)
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
#: named mutations (file, old, new): one mutant per line holding ``old``
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
    # the run's PGA settings ignored (issue #19: the options object replaced the
    # strategy's keyword arguments, where these three mutants used to sit)
    ("pga.py", "= options.estimator, options.virtual_step,", '= options.estimator, "sgd",'),
    ("pga.py", "= options.estimator,", '= "first_order",'),
    ("pga.py", "options.virtual_step, options.measure", "options.virtual_step, False"),
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
    # issue #22: the probe measures the cosines it names; the transfer shift is used
    ("base.py", "g_mte = grad(moved, cur[1])", "g_mte = grad(*cur)"),
    ("base.py", "cos(g_cur, g_rep, dim=0)", "cos(g_cur, g_mtr, dim=0)"),
    ("base.py", "        self.probe(model, ctx)", "        pass"),
    ("pga_real.py", 'if cfg.pga.shift == "transfer":', "if False:"),
    ("pga_real.py", "        self.probe(model, ctx)", "        pass"),
]
TOP = (
    "pga.py",
    "smd.py",
    "transfer.py",
)  # modules at the package's top level (the rest: strategies/)


def _rel(name: str) -> str:
    """``pga.py`` -> ``smg_learning/pga.py``; a strategy module -> ``smg_learning/strategies/...``."""
    return f"{PKG}/{name}" if name in TOP else f"{PKG}/strategies/{name}"


def _group(file: str) -> str:
    name = Path(file).name
    return name.removesuffix(".py") if name in TOP else "strategies"


def _code_lines(path: Path):
    """(index, line) of the lines to mutate: code, not docstrings/comments/imports."""
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


def make_mutants(src: Path, per_line: int = 1) -> list[Mutant]:
    """The generated mutants of every target file, then the named ones (``per_line``
    is not used: the rules give one mutant per matching rule and line)."""
    strategies = sorted(p.name for p in (src / PKG / "strategies").glob("*.py"))
    out = []
    for name in [*TOP, *(n for n in strategies if n != "__init__.py")]:
        out += regex_mutants(src, _rel(name), _code_lines(src / _rel(name)), RULES)
    for name, old, new in NAMED:
        file = _rel(name)
        lines = (src / file).read_text().splitlines()
        hits = [i for i, ln in enumerate(lines) if old in ln]
        if not hits:
            raise ValueError(f"named mutant: {old!r} not in {file}")
        for i in hits:  # one mutant per occurrence
            new_line = lines[i].replace(old, new)
            label = f"named: {name}:{i + 1}: {new_line.strip()}"
            out.append(
                Mutant(str(src), file, i + 1, lines[i] + "\n", new_line + "\n", label, "named")
            )
    return out


def tests_for(mutant: Mutant, full: bool) -> list[str]:
    """The fast tests of the mutant's group (``full``: and the wider ones)."""
    group = _group(mutant.file)
    return TESTS[group] + (FULL[group] if full else [])
