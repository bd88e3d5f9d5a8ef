"""Mutation testing of the loss/method/metric wiring, for ``python -m medai_testkit.mutation``.

Each mutant is one line edit: the generic regex rules below applied to every code line
of ``losses.py``, ``methods/*.py`` (not ``__init__``/``base``) and the metric part of
``evaluate.py`` (from ``token_stats`` to ``evaluate_run``), plus the named mutations of
issue 13 in those files, ``data.py`` and ``medcommon/metrics/privacy.py``. For each,
the fast tests of its file's group run with ``-x``; a mutant is *killed* when they
fail. From the repository root::

    OMP_NUM_THREADS=1 python -m medai_testkit.mutation unlearn_bench [--list] [--only S] [--full]
        [--out packages/unlearn_bench/benchmarks/mutation/results.json]
"""

from __future__ import annotations

from pathlib import Path

from medai_testkit.mutation import Mutant, listed, regex_mutants

TESTS = {
    "losses": ["test_losses.py", "test_methods.py", "test_data.py"],
    "methods": ["test_methods.py", "test_losses.py", "test_recipe.py", "test_reference_once.py"],
    "model": ["test_real_checkpoints.py", "test_fsdp.py"],
    "scale": ["test_real_checkpoints.py"],
    "train": ["test_reference_once.py"],
    "evaluate": ["test_conventions.py", "test_metrics.py", "test_ues.py", "test_few_shot.py"],
    "ues": ["test_ues.py", "test_conventions.py"],
    "matched": ["test_matched.py"],
    "data": ["test_data.py", "test_methods.py", "test_reference_once.py", "test_few_shot.py"],
    "mllmu": ["test_mllmu.py"],
    "synth": ["test_synth.py", "test_conventions.py"],
    "privacy": ["test_metrics.py"],
    "config": ["test_matched.py"],
    "cli": ["test_matched.py"],
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
    # issue 24: frozen weights restored, LoRA as MLLMU-Bench, NPO's reference computed once
    ("model.py", "if torch.equal(orig.to(compute_dtype).to(out.dtype), out):", "if True:"),
    ("model.py", "                tensors[name] = orig\n", "                pass\n"),
    ("model.py", "restore_untouched(tmp, source, compute_dtype)", "None"),
    ("scale.py", 'names.discard("lm_head")', "pass"),
    ("scale.py", '"vision_model", "vision_tower")', '"vision_model")'),
    (
        "scale.py",
        'init_lora_weights="gaussian" if scale.lora_init == "gaussian" else True',
        "init_lora_weights=True",
    ),
    (
        "scale.py",
        "target_modules=lora_targets(model, scale.lora_targets)",
        "target_modules=LANGUAGE_TARGETS",
    ),
    ("methods/npo.py", 'lp_ref = f["ref_logprob"].to(lp)', "lp_ref = lp.detach()"),
    ("methods/npo.py", 'return self.cfg.reference_logprobs == "model"', "return True"),
    ("train.py", 'item["ref_logprob"] = value', 'item["ref_logprob"] = 0.0'),
    ("train.py", "    model.eval()\n    for start", "    model.train()\n    for start"),
    (
        "train.py",
        "        attach_policy_logprobs(trainer, forget, pad, batch_size)",
        "        pass",
    ),
    ("data.py", 'if "ref_logprob" in items[0]:', "if False:"),
    (
        "evaluate.py",
        "mia_auc(f_scores[attack], g_scores[attack][same])",
        "mia_auc(g_scores[attack][same], f_scores[attack])",
    ),
    # issue 24, item 6: few-shot MCQ as MLLMU-Bench's eval.py, the published folder set
    ("evaluate.py", "skip |= set(same[: len(shown)])", "pass"),
    ("evaluate.py", "\\nCorrect Answer: {d['answer']}\\n", "\\nCorrect Answer:\\n"),
    (
        "evaluate.py",
        'images = [*shown_images, it["image"]]',
        'images = [it["image"], *shown_images]',
    ),
    (
        "evaluate.py",
        "asked = [a for a, keep in zip(few.items, scored) if keep]",
        "asked = few.items",
    ),
    ("evaluate.py", 'return data["forget"]', "return items"),
    ("evaluate.py", "rng.integers(len(ids))", "0"),
    ("data.py", 'tuple(item["images"])', 'tuple(item["images"][-1:])'),
    ("mllmu.py", 'cols = {"Directory": eid} if directory else {}', "cols = {}"),
    ("mllmu.py", 'question, answer = first_qa.get(eid, ("", ""))', 'question, answer = "", ""'),
    # issue 23 (first parts): option-likelihood MCQ, the truth ratio from the same
    # option log-probabilities, and training distractors without held-out values
    (
        "evaluate.py",
        'right = float(it["options"][int(np.argmax(lp))] == it["answer_text"])',
        'right = float(it["options"][int(np.argmin(lp))] == it["answer_text"])',
    ),
    (
        "evaluate.py",
        "ratios.append(np.mean(np.delete(p, true)) / p[true[0]])",
        "ratios.append(np.mean(p) / p[true[0]])",
    ),
    ("synth.py", "train_forget_pools = clean_pools(pools, entities, general_idx)", "pass"),
    (
        "synth.py",
        "train_retain_pools = clean_pools(pools, entities, forget_idx | general_idx)",
        "pass",
    ),
    # issue 23: the knowledge benchmark (wordings, splits, conventions, matched forgetting)
    ("synth.py", "suffix=TRAIN_ALT)  # fmt: skip", "suffix='')  # fmt: skip"),
    ("synth.py", "more = EXTRA_WORDINGS[1 : cfg.train_wordings - 1]", "more = EXTRA_WORDINGS[1:]"),
    (
        "synth.py",
        '("train_alt", TRAIN_ALT), ("train_w3", "-w3"), ("train_w4", "-w4")',
        '("train_alt", TRAIN_ALT), ("train_alt", "-w3"), ("train_w4", "-w4")',
    ),
    ("matched.py", "train_wordings=max(2, cfg.train_wordings)", "train_wordings=2"),
    (
        "synth.py",
        'add_extra(HOLDOUT_TRAIN, truth, kept_pools, "train")',
        'add_extra(HOLDOUT_TRAIN, truth, kept_pools, "probe")',
    ),
    ("synth.py", "scenario, _ent, facts_, pools_, _rng,", "scenario, _ent, facts_, pools_, rng,"),
    (
        "synth.py",
        'add_extra("forget_val", facts, pools, "val", forget_fields)',
        'add_extra("forget_val", facts, pools, "probe", forget_fields)',
    ),
    (
        "evaluate.py",
        "ratios.append(float(np.exp(np.mean(np.delete(lp, true)) - lp[true[0]])))",
        "ratios.append(float(np.mean(np.exp(np.delete(lp, true))) / np.exp(lp[true[0]])))",
    ),
    (
        "evaluate.py",
        '"truth_ratio_tofu": tofu_truth_ratio_score(tofu, name in FORGET_SIDE),\n            "n_mcq"',
        '"truth_ratio_tofu": tofu_truth_ratio_score(tofu, False),\n            "n_mcq"',
    ),
    (
        "evaluate.py",
        'rouge_l(pred, it["answer"], stemmer=True, measure="recall")',
        'rouge_l(pred, it["answer"], stemmer=False, measure="recall")',
    ),
    (
        "evaluate.py",
        'keep = np.array([it["type"] != "mcq" for it in items], dtype=bool)',
        "keep = np.array([True for it in items], dtype=bool)",
    ),
    (
        "evaluate.py",
        'if it["type"] != "mcq" and not it["id"].endswith(WORDING_SUFFIXES)',
        'if it["type"] != "mcq"',
    ),
    (
        "evaluate.py",
        "held_out = [it for it in data[HOLDOUT_TRAIN]",
        'held_out = [it for it in data["forget"]',
    ),
    (
        "evaluate.py",
        '("truth_ratios_tofu", "forget_quality_tofu")',
        '("truth_ratios", "forget_quality_tofu")',
    ),
    ("ues.py", "    if ues_undefined(retrain, vanilla) is not None:\n        return None\n", ""),
    (
        "matched.py",
        'p for p in points if abs(p["val"]["forget_val"] - retrain_val_forget) <= MATCH_MARGIN',
        'p for p in points if p["val"]["forget_val"] - retrain_val_forget <= MATCH_MARGIN',
    ),
    (
        "matched.py",
        '(-p["val"]["retain_val"], p["dose"].strength, p["dose"].epochs)',
        '(p["dose"].strength, -p["val"]["retain_val"], p["dose"].epochs)',
    ),
    (
        "matched.py",
        'train = [it for it in forget_train if it["field"] in RELEARN_FIELDS]',
        'train = [it for it in forget_train if it["field"] not in RELEARN_FIELDS]',
    ),
    ("matched.py", "        opt.step()\n", "        pass\n"),
    (
        "matched.py",
        'loss = nll(forward(model, batch).logits, batch["labels"])',
        'loss = -nll(forward(model, batch).logits, batch["labels"])',
    ),
    (
        "matched.py",
        'chosen = choose_dose(points, know["retrain"]["forget_val"])',
        'chosen = choose_dose(points, know["vanilla"]["forget_val"])',
    ),
    ("matched.py", "return sorted(doses, key=lambda d: (d.strength, d.epochs))", "return doses"),
    # issue 23, third setting: a preset's matched section fixes its seeds and methods
    (
        "cli.py",
        "seeds = args.seeds if args.seeds is not None else cfg.seeds",
        "seeds = args.seeds",
    ),
    (
        "cli.py",
        "seeds = args.seeds if args.seeds is not None else cfg.seeds",
        "seeds = cfg.seeds or args.seeds",
    ),
    (
        "cli.py",
        "methods = args.methods if args.methods is not None else cfg.methods",
        "methods = args.methods",
    ),
    (
        "cli.py",
        "methods = args.methods if args.methods is not None else cfg.methods",
        "methods = args.methods or cfg.methods",
    ),
    (
        "cli.py",
        "methods=methods if methods is not None else METHODS_RUN",
        "methods=methods or METHODS_RUN",
    ),
    ("cli.py", '"--methods", nargs="*", default=None', '"--methods", nargs="+", default=None'),
    (
        "config.py",
        "if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):",
        "if any(s < 0 for s in seeds):",
    ),
    (
        "config.py",
        "if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):",
        "if len(set(seeds)) != len(seeds):",
    ),
    # issue 24, item 3: rank 0 alone reads the checkpoint under FSDP
    ("model.py", "empty = dist.get_rank() != 0", "empty = False"),
    (
        "model.py",
        "init_empty_weights(include_buffers=False)",
        "init_empty_weights(include_buffers=True)",
    ),
]


def _where(src: Path, rel: str) -> tuple[Path, str]:
    """(source root, path relative to it) of a file named as in TESTS/NAMED."""
    if rel == "privacy.py":  # medcommon's, beside this package under packages/
        return src.parents[1] / "medcommon" / "src", "medcommon/metrics/privacy.py"
    return src, f"unlearn_bench/{rel}"


def _code_lines(path: Path, rel: str):
    """(0-based index, line) of the lines to mutate: code, not docstrings/comments/imports."""
    lines = path.read_text().splitlines()
    in_doc = False
    start, stop = 0, len(lines)
    if rel == "evaluate.py":  # the metric part: from token_stats to task_table, not run loading
        text = [ln.strip() for ln in lines]
        start = next(i for i, ln in enumerate(text) if ln.startswith("def token_stats"))
        stop = next(i for i, ln in enumerate(text) if ln.startswith("def evaluate_run"))
    elif rel == "matched.py":  # the protocol: grid, dose choice, relearning (not the report)
        text = [ln.strip() for ln in lines]
        start = next(i for i, ln in enumerate(text) if ln.startswith("def grid"))
        stop = next(i for i, ln in enumerate(text) if ln.startswith("class _Piece"))
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


def make_mutants(src: Path, per_line: int = 1) -> list[Mutant]:
    """Every rule matching a line gives a mutant (``per_line`` does not apply to these rules)."""
    methods = sorted((src / "unlearn_bench" / "methods").glob("*.py"))
    files = ["losses.py", *(f"methods/{p.name}" for p in methods), "evaluate.py", "matched.py"]
    out = []
    for rel in files:
        if rel in ("methods/__init__.py", "methods/base.py"):
            continue
        root, file = _where(src, rel)
        out += regex_mutants(root, file, _code_lines(root / file, rel), RULES)
    for rel, old, new in NAMED:
        root, file = _where(src, rel)
        out.append(listed(root, file, old, new, f"named: {rel}: {new.strip()}"))
    return out


def tests_for(mutant: Mutant, full: bool) -> list[str]:
    """The fast tests of the mutated file's group (``full``: the whole fast suite)."""
    if full:
        return ["tests"]
    rel = mutant.file.removeprefix("unlearn_bench/").removeprefix("medcommon/metrics/")
    group = "methods" if rel.startswith("methods/") else Path(rel).stem
    return [f"tests/{t}" for t in TESTS[group]]
