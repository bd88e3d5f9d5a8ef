"""What the benchmark sets out to show, fixed in code before it runs.

The paper (Xu et al., arXiv 2401.09029) claims that CMG, per-modality branches with
cross-modality guidance from the T1ce branch and dual (spatial + slice) attention,
grades glioma better than a single modality and than plain fusion, and that guidance
and dual attention each contribute. Each sentence becomes one :class:`Claim` on the
test AUC; :func:`medcommon.report.check_claims` decides it, and every claim is
reported, whatever its decision.

Decision: on the paired differences AUC(CMG) − AUC(baseline), one per (seed, fold)
run both methods have (same split, same seed), with a 95 % t-interval over the pairs.
A claim *holds* when the whole interval lies above :data:`MARGIN` = 0.01 AUC, *fails*
when it lies wholly below, and is *undecided* when it straddles the margin (the seeds
are too few for the spread) or fewer than two pairs exist; never on one mean against
the margin. The paper presents its gains as improvements of about one AUC point or
more; a smaller difference is not a gain a reader would act on. The same margin
applies to the central claims and to the ablations, decided before any run with
these claims (issue #25 changed only the decision rule, not the margin).
"""

from __future__ import annotations

from collections.abc import Iterable

from medcommon.report import Claim

MARGIN = 0.01
"""Smallest test-AUC gain (CMG minus baseline) that counts as "better": a claim holds
when the 95 % interval of the paired differences lies wholly above it."""

CLAIMS: tuple[Claim, ...] = (
    # Central claims: CMG against the best single modality and the two plain fusions.
    Claim("CMG beats the best single modality (T1ce)", "cmg", "single-t1ce", "auc", margin=MARGIN),
    Claim("CMG beats early fusion (4-channel input)", "cmg", "early-fusion", "auc", margin=MARGIN),
    Claim(
        "CMG beats late fusion (mean of per-modality branches)",
        "cmg",
        "late-fusion",
        "auc",
        margin=MARGIN,
    ),
    # Mechanisms: CMG against itself without each one.
    Claim(
        "cross-modality guidance helps (CMG vs CMG without guidance)",
        "cmg",
        "cmg-no-guidance",
        "auc",
        margin=MARGIN,
    ),
    Claim(
        "dual attention helps (CMG vs CMG without attention)",
        "cmg",
        "cmg-no-attention",
        "auc",
        margin=MARGIN,
    ),
)


def claims_for(methods: Iterable[str]) -> list[Claim]:
    """The declared claims whose method and baseline are both among ``methods``.

    A benchmark run on a subset of the methods (``--methods``, or the ``demo``
    preset) checks only the claims it has data for; a claim left out this way is
    not checked, not reported as failing for a method that never ran.
    """
    ran = set(methods)
    return [c for c in CLAIMS if c.method in ran and c.baseline in ran]
