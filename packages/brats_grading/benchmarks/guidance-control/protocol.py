"""The positive control of cross-modality guidance (issue #21): settings, runs, claims.

Fixed in code and committed before any guided run (see the git history of this file);
``run.py`` beside it runs it and the results land in this folder, whatever they are.

**Premise** (Xu et al., arXiv 2401.09029): the primary modality's branch learns the
discriminative pattern easily; its soft labels and features teach a secondary branch,
whose own evidence of that pattern is weaker, what to look for, and this matters
when the data are few. The generator family builds exactly that
(:class:`brats_grading.synth.GradeCues` with ``flair_share`` > 0): one latent grade
score ``z1 = g + e1`` (``e1 ~ N(0, 0.5)``) sets the enhancement of the tumour rim,
strong in T1ce and, on the same rim voxels, at :data:`SHARE` of that amplitude in
FLAIR, beside FLAIR's own independent cue (oedema extent, ``z2 = g + e2``,
``e2 ~ N(0, 1.0)``, within-grade correlation 0). The within-grade spread of ``z1`` is
what the teacher's soft labels know about a case beyond its label.

**Where the premise fails**: the same cases with ``flair_share`` = 0 (FLAIR shows no
trace of the pattern; every other voxel identical): the teacher then describes
something the student cannot see.

**Premise check done before this file** (single branches only, no guided run, seeds
0-1 of a pilot set, 100 steps): T1ce alone 0.74-0.85 AUC at n = 24 and 0.85-0.89 at
n = 160; FLAIR alone 0.55-0.69 at n = 24 (share 0.25) against 0.54-0.65 (share 0),
and 0.74-0.79 at n = 160 (share 0.25) against 0.65-0.68 (share 0): the faint pattern
is learnable from FLAIR with 160 cases and hardly with 24. Those two sizes were
chosen from it. The only guided runs before this file was committed were smoke runs
of ``run.py --preset tiny`` (toy data, 3 steps: no evidence either way).

**Settings** (4 cells): share ∈ {0.25, 0} x training size n ∈ {24, 160} (half HGG,
half LGG: class balance is not the subject here). One pool of 200 training cases and
one test set of 200 (100 HGG / 100 LGG) per share, from generator seeds
:data:`POOL_SEED` and :data:`TEST_SEED`, written as BraTS 2019 NIfTI and read by the
package's loader at :data:`SHAPE` (the generator's own size: no blur of the rim
beyond the brain crop). Each seed draws its own stratified training subset of each
size from the pool (the same subset at both shares: common random numbers).

**Model and training**: the ``small`` preset's branch (stem 8, widths 8/16/16, dual
attention), two branches (T1ce primary, FLAIR secondary: ``model.modalities =
[t1ce, flair]``), the fixed mean of the two branch probabilities as the fused
prediction (no validation-fitted weights: the reliability fit would halve the
training data and add its own noise to an effect on one branch), :data:`STEPS`
steps per stage, batch :data:`BATCH`, AdamW lr 3e-3, one CPU thread per process.
The primary stage is trained once per (setting, seed) and shared by the four
variants (:class:`brats_grading.train.StageCache`): every variant has the same
teacher, weight for weight.

**Variants** (stage 2 of ``cmg``; rows' ``method``):

- ``guided``: the paper's guidance, KD (T = 4) + feature alignment, weights 1;
- ``no-guidance``: λ_kd = λ_fa = 0 (``cmg-no-guidance``);
- ``label-smoothing``: ``guidance.teacher=class-mean``: the same terms towards the
  class mean of the teacher's tempered distributions and features in the batch
  (label smoothing at the teacher's own average strength, no case information);
- ``shuffled-teacher``: ``guidance.teacher=shuffled``: the same terms towards the
  outputs of another case of the same grade (spread and class kept, case lost).

**Endpoints** per (setting, seed), on the 200 test cases: ``secondary_auc`` (the FLAIR
branch alone, where guidance acts) and ``fused_auc``; the teacher's AUC is logged as
its own row (method ``teacher``, metric ``secondary_auc`` holding T1ce's AUC, for the
premise claim). **The mechanism's signal**, on the test cases as a fixed probe set,
after stage 1 (FLAIR branch untrained) and after stage 2, for every variant: linear
CKA between the FLAIR and T1ce branches' pooled features (``cka``), and the
distillation and alignment terms towards the real teacher (``kd``, ``fa``; computed
even where their weights are 0).

**Statistics**: claims are decided by :func:`medcommon.report.check_claims` on the
paired per-seed differences (same subset, same teacher), 95 % t-interval over the
:data:`SEEDS`; the report adds, for the headline differences, a 95 % interval over
cases (1,000 stratified resamples of the test set, shared by the variants, of the
seed-averaged AUC difference). The size interaction is decided the same way on the
per-seed difference of differences (rows of setting ``<share>:n24-n160``).

**Margins**: 0.02 AUC on the secondary branch (a positive control is built to show a
large effect; anything smaller is not one), 0.01 on the fused AUC (the package's
margin), 0.05 on CKA, 0.10 for the premise (teacher over FLAIR alone at n = 24).
"""

from __future__ import annotations

from medcommon.report import Claim

SHARE = 0.25
SHARES = (SHARE, 0.0)
SIZES = (24, 160)
SEEDS = tuple(range(8))
POOL = 200
TEST = 200
POOL_SEED = 2101
TEST_SEED = 2102
SHAPE = (16, 24, 24)
STEPS = 100
BATCH = 16
FLAIR_NOISE = 1.0
BOOTSTRAP = 1000
THREADS = 1

VARIANTS = {
    "guided": (),
    "no-guidance": ("guidance.kd_weight=0", "guidance.feature_weight=0"),
    "label-smoothing": ("guidance.teacher=class-mean",),
    "shuffled-teacher": ("guidance.teacher=shuffled",),
}
"""Stage-2 variants of ``cmg``: their ``--set`` overrides on top of :func:`overrides`."""


def setting_name(share: float, n: int) -> str:
    return f"share{share:g}-n{n}"


def interaction_name(share: float) -> str:
    """The rows holding, per seed, a metric at n = 24 minus the same at n = 160."""
    return f"share{share:g}:n{SIZES[0]}-n{SIZES[1]}"


def overrides() -> tuple[str, ...]:
    """The ``cmg`` config of every variant (on the ``small`` preset)."""
    return (
        f"shape={list(SHAPE)}",
        f"steps={STEPS}",
        f"primary_steps={STEPS}",
        f"batch_size={BATCH}",
        "model.modalities=[t1ce, flair]",
        "model.fusion=mean",
    )


HOLDS = setting_name(SHARE, SIZES[0])
LARGE = setting_name(SHARE, SIZES[1])
FAILS = setting_name(0.0, SIZES[0])

CLAIMS: tuple[Claim, ...] = (
    # The premise, checked on every run: the teacher knows far more than FLAIR alone.
    Claim("premise: at n=24 the T1ce teacher grades far better than FLAIR alone",
          "teacher", "no-guidance", "secondary_auc", setting=HOLDS, margin=0.10),
    # Headline: where the premise holds and data are few.
    Claim("guidance improves the FLAIR branch (n=24, FLAIR shows the pattern faintly)",
          "guided", "no-guidance", "secondary_auc", setting=HOLDS, margin=0.02),
    Claim("the gain is the teacher's case information, not smoothing (vs label smoothing)",
          "guided", "label-smoothing", "secondary_auc", setting=HOLDS, margin=0.02),
    Claim("the gain is the teacher's case information (vs a within-grade shuffled teacher)",
          "guided", "shuffled-teacher", "secondary_auc", setting=HOLDS, margin=0.02),
    Claim("guidance improves the fused prediction (n=24, pattern shared)",
          "guided", "no-guidance", "fused_auc", setting=HOLDS, margin=0.01),
    # Size: the gain shrinks when FLAIR alone has enough data to find the pattern.
    Claim("guidance helps the FLAIR branch more at n=24 than at n=160",
          "guided", "no-guidance", "secondary_auc", setting=interaction_name(SHARE), margin=0.0),
    Claim("guidance improves the FLAIR branch at n=160 (pattern shared)",
          "guided", "no-guidance", "secondary_auc", setting=LARGE, margin=0.02),
    # Where the premise fails: nothing of the pattern in FLAIR.
    Claim("without the pattern in FLAIR, the teacher's case information adds nothing (n=24)",
          "guided", "shuffled-teacher", "secondary_auc", setting=FAILS, test="within",
          margin=0.02),
    Claim("without the pattern in FLAIR, guidance does not improve the FLAIR branch (n=24)",
          "guided", "no-guidance", "secondary_auc", setting=FAILS, test="within", margin=0.02),
    # The mechanism's own signal: guidance moves FLAIR's features towards T1ce's.
    Claim("guidance raises the FLAIR-T1ce feature similarity (linear CKA, n=24, shared)",
          "guided", "no-guidance", "cka", setting=HOLDS, margin=0.05),
)  # fmt: skip
