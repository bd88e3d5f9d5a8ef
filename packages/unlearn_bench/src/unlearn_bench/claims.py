"""What the benchmark sets out to show, fixed in code before it runs.

The paper's point (MLLMU-Bench style, judged against the retrained "gold" model):
an unlearning method removes the forget set's private knowledge while keeping the
retain set's utility. The claims use the plain per-subset accuracies (MCQ accuracy:
the first generated letter is the right option), not the composite scores, so that
they read the same whatever UES or PrivLeak convention is in force.

Margins are absolute MCQ accuracy (4 options, chance 0.25), chosen from the claim,
not from any run: 0.10 is a clear drop in forget accuracy (and, read as a
tolerance, "utility kept"); 0.0 for a head-to-head ordering of two methods.

A claim is decided (:func:`medcommon.report.check_claims`) on the paired per-seed
differences method − baseline (the same scenario and seed), with a 95 % t-interval:
it holds when the whole interval clears the margin, fails when the whole interval lies
on the other side, and is undecided when the interval straddles the margin (or fewer
than two seeds pair up), never on one mean against the margin.

- Sanity: retrain's forget accuracy is below vanilla's, i.e. the fine-tune memorised
  facts that the forget set alone carries (otherwise there is nothing to unlearn).
- Central claim: NPO (Zhang et al. 2024) lowers forget accuracy below vanilla,
  keeps retain accuracy within the margin of vanilla, and lands within the margin
  of the gold (retrained) model's forget accuracy.
- Mechanism ablations: NPO's bounded loss vs plain gradient ascent (NPO with
  beta -> 0 is GA) keeps retain accuracy better; GradDiff's retain term (GradDiff
  without it is GA) keeps retain accuracy better.

:data:`LEARNED` holds claims added after a run taught something: they are post hoc
(``post_hoc=True``), reported with their outcome and never counted in a headline of
claims that hold. The declared ones stay as they were, holding or not, and both are
reported.
"""

from __future__ import annotations

from collections.abc import Sequence

from medcommon.report import Claim

MARGIN = 0.10  # absolute MCQ accuracy; see the module docstring


def declared_claims() -> list[Claim]:
    """Every claim of the benchmark, in reading order (the central one first)."""
    p, i = "privacy", "incorrectness"
    return [
        Claim(
            "NPO lowers forget-set accuracy below vanilla (unlearns)",
            "npo", "vanilla", "forget_mcq_acc", p, "less", MARGIN,
        ),
        Claim(
            "NPO keeps retain-set accuracy within 0.10 of vanilla (utility kept)",
            "npo", "vanilla", "retain_mcq_acc", p, "within", MARGIN,
        ),
        Claim(
            "NPO's forget-set accuracy is within 0.10 of the retrained (gold) model's",
            "npo", "retrain", "forget_mcq_acc", p, "within", MARGIN,
        ),
        Claim(
            "sanity: retrain's forget-set accuracy is below vanilla's (facts memorised)",
            "retrain", "vanilla", "forget_mcq_acc", p, "less", MARGIN,
        ),
        Claim(
            "ablation: NPO keeps retain accuracy better than GA (bounded loss)",
            "npo", "ga", "retain_mcq_acc", p, "greater", 0.0,
        ),
        Claim(
            "ablation: GradDiff keeps retain accuracy better than GA (retain term)",
            "grad_diff", "ga", "retain_mcq_acc", p, "greater", 0.0,
        ),
        Claim(
            "NPO lowers forget-set accuracy below vanilla (unlearns)",
            "npo", "vanilla", "forget_mcq_acc", i, "less", MARGIN,
        ),
        Claim(
            "sanity: retrain's forget-set accuracy is below vanilla's (facts memorised)",
            "retrain", "vanilla", "forget_mcq_acc", i, "less", MARGIN,
        ),
        *LEARNED,
    ]  # fmt: skip


# Added after the first demo run (privacy, seeds 0-2): on a fully memorised vanilla model
# NPO left the forget MCQ accuracy near 1.0 (the declared claim failed) while its generated
# answers lost the forget facts; cloze accuracy (the reference is a substring of the greedy
# answer) measures that. Same margin, but written after its result was seen: post hoc.
# Added after the demo of 2290390 showed option likelihood (issue #23, mcq_lik_acc) seeing
# what the letter MCQ did not (vanilla 0.896 vs retrain 0.062 on forget probes): the same
# sanity and central claims read by likelihood. Written after those values were seen, so
# post hoc; issue #23's own benchmark (unlearn_bench.matched) declares its claims in advance.
LEARNED: list[Claim] = [
    Claim(
        "learned: NPO lowers forget-set cloze accuracy below vanilla (answers forget)",
        "npo", "vanilla", "forget_cloze_acc", "privacy", "less", MARGIN, post_hoc=True,
    ),
    Claim(
        "learned: sanity read by option likelihood: retrain's forget accuracy below vanilla's",
        "retrain", "vanilla", "forget_mcq_lik_acc", "privacy", "less", MARGIN, post_hoc=True,
    ),
    Claim(
        "learned: NPO lowers forget option-likelihood accuracy below vanilla",
        "npo", "vanilla", "forget_mcq_lik_acc", "privacy", "less", MARGIN, post_hoc=True,
    ),
]  # fmt: skip


def claims_for(methods: Sequence[str], scenarios: Sequence[str]) -> list[Claim]:
    """The declared claims that a run of ``methods`` (plus vanilla, retrain) on ``scenarios`` can
    check; a claim about a method or scenario that the run leaves out is not asked of it."""
    ran = {"vanilla", "retrain", *methods}
    return [
        c
        for c in declared_claims()
        if c.method in ran and c.baseline in ran and c.setting in scenarios
    ]
