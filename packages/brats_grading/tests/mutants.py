"""Mutation testing of ``methods/*.py``, ``losses.py``, ``attention.py`` and the guidance
variants, for the one runner :mod:`medai_testkit.mutation` (not collected by pytest).

Each mutant is one hand-written edit (old text -> new text, which must occur exactly
once), applied to a copy of the sources; the fast wiring tests run with ``-x`` and a
mutant is killed when they fail. The first ten are the wirings named in issue 11; the
rest are the other plausible one-line slips and the item-3 guidance variants. Run
from the repository root::

    OMP_NUM_THREADS=1 python -m medai_testkit.mutation brats_grading [--list] [--only TEXT]
        [--out packages/brats_grading/benchmarks/mutation/mutants.json]
"""

from pathlib import Path

from medai_testkit.mutation import Mutant, listed

TESTS = [
    "tests/test_wiring.py",
    "tests/test_methods.py",
    "tests/test_losses.py",
    "tests/test_model.py",
    "tests/test_controls.py",
    "tests/test_cli.py::TestMethodSteps",
    "tests/test_cli.py::test_guided_step_keeps_the_teacher_fixed_and_uses_guidance",
]
"""The fast wiring tests every mutant runs against (paths relative to the package)."""

MUTANTS = [
    # the five named in issue 11
    (
        "named: guidance off in stage 2",
        "methods/cmg.py",
        "guided_step(cfg, net, weight), cfg.steps",
        "ce_step(weight, trainable), cfg.steps",
    ),
    ("named: guidance off (kd)", "methods/cmg.py", "kd_weight=g.kd_weight,", "kd_weight=0.0,"),
    (
        "named: guidance off (alignment)",
        "methods/cmg.py",
        "feature_weight=g.feature_weight,",
        "feature_weight=0.0,",
    ),
    ("named: teacher in train mode", "methods/cmg.py", "branch.eval()  #", "branch.train()  #"),
    (
        "named: teacher features not detached (loss)",
        "losses.py",
        "p = F.normalize(teacher.detach(), dim=1)",
        "p = F.normalize(teacher, dim=1)",
    ),
    (
        "named: teacher logits not detached (loss)",
        "losses.py",
        "log_p = F.log_softmax(teacher.detach() / t, dim=1)",
        "log_p = F.log_softmax(teacher / t, dim=1)",
    ),
    (
        "named: teacher forward with grad",
        "methods/cmg.py",
        "with torch.no_grad():",
        "with torch.enable_grad():",
    ),
    (
        "named: attention not transposed",
        "attention.py",
        "out = torch.bmm(v, attn.transpose(1, 2))",
        "out = torch.bmm(v, attn)",
    ),
    ("named: dual sum xs+xd", "attention.py", "return xs + xd - x,", "return xs + xd,"),
    ("named: dual sum mean", "attention.py", "return xs + xd - x,", "return (xs + xd) / 2,"),
    # losses.py
    (
        "ce ignores class weights",
        "losses.py",
        "return F.cross_entropy(logits, y, weight=weight)",
        "return F.cross_entropy(logits, y)",
    ),
    (
        "student not softened",
        "losses.py",
        "log_q = F.log_softmax(student / t, dim=1)",
        "log_q = F.log_softmax(student, dim=1)",
    ),
    (
        "reverse KL",
        "losses.py",
        "kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)",
        "kl = (log_q.exp() * (log_q - log_p)).sum(dim=1)",
    ),
    ("T instead of T^2", "losses.py", "return kl.mean() * t * t", "return kl.mean() * t"),
    ("KL sum over batch", "losses.py", "return kl.mean() * t * t", "return kl.sum() * t * t"),
    ("student not normalised", "losses.py", "s = F.normalize(student, dim=1)", "s = student"),
    (
        "alignment mean over channels",
        "losses.py",
        "return (s - p).square().sum(dim=1).mean()",
        "return (s - p).square().mean()",
    ),
    (
        "ce not averaged over secondaries",
        "losses.py",
        "class_weight) for n in names) / len(names)",
        "class_weight) for n in names)",
    ),
    (
        "kd/fa not averaged",
        "losses.py",
        "kd, fa = kd / len(names), fa / len(names)",
        "kd, fa = kd, fa",
    ),
    (
        "kd and fa weights swapped",
        "losses.py",
        "loss = ce_weight * ce + kd_weight * kd + feature_weight * fa",
        "loss = ce_weight * ce + kd_weight * fa + feature_weight * kd",
    ),
    (
        "ce weight dropped",
        "losses.py",
        "loss = ce_weight * ce + kd_weight * kd + feature_weight * fa",
        "loss = ce + kd_weight * kd + feature_weight * fa",
    ),
    (
        "kd teacher/student swapped",
        "losses.py",
        "distillation_kl(secondary_logits[n], primary_logits, temperature)",
        "distillation_kl(primary_logits, secondary_logits[n], temperature)",
    ),
    # attention.py
    (
        "spatial softmax over queries",
        "attention.py",
        "attn = torch.softmax(torch.bmm(q, k) / q.shape[-1] ** 0.5, dim=-1)",
        "attn = torch.softmax(torch.bmm(q, k) / q.shape[-1] ** 0.5, dim=1)",
    ),
    (
        "spatial no scaling",
        "attention.py",
        "attn = torch.softmax(torch.bmm(q, k) / q.shape[-1] ** 0.5, dim=-1)",
        "attn = torch.softmax(torch.bmm(q, k), dim=-1)",
    ),
    (
        "spatial query from key conv",
        "attention.py",
        "q = self.query(x).permute(0, 2, 3, 4, 1)",
        "q = self.key(x).permute(0, 2, 3, 4, 1)",
    ),
    (
        "spatial no residual",
        "attention.py",
        "return self.gamma * out + x, attn.reshape(b, d, h * w, h * w)",
        "return self.gamma * out, attn.reshape(b, d, h * w, h * w)",
    ),
    (
        "spatial gamma starts at 1",
        "attention.py",
        "        self.value = nn.Conv3d(channels, channels, 1)\n        self.gamma = nn.Parameter(torch.zeros(1))\n\n    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:\n        b, c, d, h, w = x.shape\n        q =",
        "        self.value = nn.Conv3d(channels, channels, 1)\n        self.gamma = nn.Parameter(torch.ones(1))\n\n    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:\n        b, c, d, h, w = x.shape\n        q =",
    ),
    (
        "spatial wrong output reshape",
        "attention.py",
        "out = out.reshape(b, d, c, h, w).permute(0, 2, 1, 3, 4)",
        "out = out.reshape(b, c, d, h, w)",
    ),
    (
        "slice max-pooled descriptor",
        "attention.py",
        "desc = x.mean(dim=(3, 4)).transpose(1, 2)",
        "desc = x.amax(dim=(3, 4)).transpose(1, 2)",
    ),
    (
        "slice attention transposed",
        "attention.py",
        "out = torch.bmm(attn, v)",
        "out = torch.bmm(attn.transpose(1, 2), v)",
    ),
    (
        "slice softmax over queries",
        "attention.py",
        "attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / q.shape[-1] ** 0.5, dim=-1)",
        "attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / q.shape[-1] ** 0.5, dim=1)",
    ),
    (
        "dual heads in sequence",
        "attention.py",
        "xd, a_sl = self.slice(x)",
        "xd, a_sl = self.slice(xs)",
    ),
    (
        "inner width ignores reduction",
        "attention.py",
        "inner = max(1, channels // reduction)\n        self.query = nn.Conv3d",
        "inner = channels\n        self.query = nn.Conv3d",
    ),
    # methods/
    (
        "ce_step sums branches",
        "methods/base.py",
        'return {"loss": sum(losses) / len(losses)}',
        'return {"loss": sum(losses)}',
    ),
    (
        "ce_step runs every branch",
        "methods/base.py",
        'out = model(batch["x"], branches=branches)',
        'out = model(batch["x"])',
    ),
    (
        "ce_step ignores class weight",
        "methods/base.py",
        'w = None if weight is None else weight.to(batch["x"].device)',
        "w = None",
    ),
    (
        "one_stage trains one branch",
        "methods/base.py",
        'return [Stage(None, branch_params(net, names), ce_step(weight), cfg.steps, names, "ce")]',
        'return [Stage(None, branch_params(net, names[:1]), ce_step(weight), cfg.steps, names, "ce")]',
    ),
    (
        "students include the primary",
        "methods/cmg.py",
        "    secondary = net.secondary_names()\n    g = cfg.guidance",
        "    secondary = net.branch_names\n    g = cfg.guidance",
    ),
    ("guidance temperature 1", "methods/cmg.py", "temperature=g.temperature,", "temperature=1.0,"),
    ("guided ce unweighted", "methods/cmg.py", "class_weight=w,", "class_weight=None,"),
    (
        "unfrozen primary gets no CE",
        "methods/cmg.py",
        "if not g.freeze_primary:\n            out",
        "if g.freeze_primary:\n            out",
    ),
    (
        "stage 2 trains the frozen primary",
        "methods/cmg.py",
        "trainable = second if cfg.guidance.freeze_primary else [primary, *second]",
        "trainable = [primary, *second]",
    ),
    (
        "stage 1 runs cfg.steps",
        "methods/cmg.py",
        "ce_step(weight, [primary]), cfg.primary_steps",
        "ce_step(weight, [primary]), cfg.steps",
    ),
    (
        "stage 1 trains every branch",
        "methods/cmg.py",
        'Stage("primary", branch_params(net, [primary]), ce_step(weight, [primary])',
        'Stage("primary", branch_params(net, [primary]), ce_step(weight)',
    ),
    (
        "cmg-no-attention keeps attention",
        "methods/cmg.py",
        '{**_CMG_MODEL, "attention": False}',
        '{**_CMG_MODEL, "attention": True}',
    ),
    (
        "cmg-no-guidance keeps alignment",
        "methods/cmg.py",
        'guidance={"kd_weight": 0.0, "feature_weight": 0.0}',
        'guidance={"kd_weight": 0.0}',
    ),
    (
        "cmg fusion is the mean",
        "methods/cmg.py",
        '_CMG_MODEL = {"inputs": "branches", "fusion": "reliability"}',
        '_CMG_MODEL = {"inputs": "branches", "fusion": "mean"}',
    ),
    (
        "late fusion reliability-weighted",
        "methods/late_fusion.py",
        '"fusion": "mean"',
        '"fusion": "reliability"',
    ),
    (
        "early fusion is branches",
        "methods/early_fusion.py",
        '{"inputs": "early"}',
        '{"inputs": "branches"}',
    ),
    ("single always t1ce", "methods/single.py", '"modality": m}', '"modality": "t1ce"}'),
    (
        "unwrap never unwraps",
        "methods/base.py",
        'return model.module if hasattr(model, "module") else model',
        "return model",
    ),
]
MUTANTS += [
    # the guidance variants of issue 11, item 3
    (
        "variant: raw features instead of the projection",
        "methods/cmg.py",
        'student["align_features"],',
        'student["features"],',
    ),
    (
        "variant: intermediate term dropped",
        "losses.py",
        "loss = loss + mid_weight * mid",
        "loss = loss",
    ),
    (
        "variant: last layer as 'intermediate'",
        "model.py",
        "mid = layers[-2] if",
        "mid = layers[-1] if",
    ),
    (
        "variant: projection not identity at start",
        "model.py",
        "self.align.weight.copy_(torch.eye(channels))",
        "self.align.weight.mul_(1.0)",
    ),
    # issue 21: the teacher controls, the generator's shared pattern, linear CKA
    (
        "control: mode not passed",
        "methods/cmg.py",
        "g.teacher, g.temperature,",
        '"case", g.temperature,',
    ),
    ("control: temperature 1", "methods/cmg.py", "g.teacher, g.temperature,", "g.teacher, 1.0,"),
    (
        "control: labels of the batch reversed",
        "methods/cmg.py",
        'teacher["features"][primary], y,',
        'teacher["features"][primary], y.flip(0),',
    ),
    (
        "control: controlled logits unused",
        "methods/cmg.py",
        "            t_logits,\n",
        '            teacher["branch_logits"][primary],\n',
    ),
    (
        "control: controlled features unused",
        "methods/cmg.py",
        "            t_features,\n",
        '            teacher["features"][primary],\n',
    ),
    (
        "shuffle: identity permutation",
        "losses.py",
        "partner = torch.roll(order, 1)",
        "partner = order",
    ),
    (
        "shuffle: logits and features apart",
        "losses.py",
        "out_features[order] = features[partner]",
        "out_features[order] = features[order]",
    ),
    (
        "shuffle: across grades",
        "losses.py",
        "idx = torch.nonzero(y == c).flatten()",
        "idx = torch.arange(y.numel(), device=y.device)",
    ),
    (
        "class-mean: untempered",
        "losses.py",
        "p = F.softmax(logits[idx] / temperature, dim=1).mean(dim=0)",
        "p = F.softmax(logits[idx], dim=1).mean(dim=0)",
    ),
    (
        "class-mean: logits not tempered back",
        "losses.py",
        "out_logits[idx] = temperature * p.clamp_min(1e-12).log()",
        "out_logits[idx] = p.clamp_min(1e-12).log()",
    ),
    (
        "class-mean: features kept",
        "losses.py",
        "out_features[idx] = features[idx].mean(dim=0)",
        "out_features[idx] = features[idx]",
    ),
    (
        "share: flair rim not shown",
        "synth.py",
        "flair[rim] += cues.flair_share * enh_amp",
        "flair[rim] += 0.0 * enh_amp",
    ),
    (
        "share: on the core instead of the rim",
        "synth.py",
        "flair[rim] += cues.flair_share * enh_amp",
        "flair[core] += cues.flair_share * enh_amp",
    ),
    ("cka: not centred", "evaluate.py", "    x = x - x.mean(axis=0)\n", "    x = x\n"),
    (
        "cka: unsquared cross term",
        "evaluate.py",
        "cross = np.linalg.norm(y.T @ x) ** 2",
        "cross = np.linalg.norm(y.T @ x)",
    ),
]


def make_mutants(src: Path, per_line: int = 1) -> list[Mutant]:
    """The listed mutants of ``src/brats_grading`` (no generated ones: ``per_line`` unused)."""
    return [listed(src, f"brats_grading/{rel}", old, new, name) for name, rel, old, new in MUTANTS]


def tests_for(mutant: Mutant, full: bool) -> list[str]:
    """:data:`TESTS`; with ``full``, the whole fast suite."""
    return ["tests/"] if full else list(TESTS)
