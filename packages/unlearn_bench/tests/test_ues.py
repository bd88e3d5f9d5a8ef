"""UES against hand computations: retrain scores 1, vanilla 0, over-forgetting is penalised.

Also the former vanilla-anchored score (``ues_vanilla``): 0 for the vanilla model and
for forget-all-retain-nothing, and the over-forgetting reward it had.
"""

from __future__ import annotations

import itertools

import pytest

from unlearn_bench.ues import knowledge_score, ues, ues_undefined, ues_vanilla


def subsets(forget, retain):
    f = {"mcq_acc": forget[0], "rougeL": forget[1], "cloze_acc": forget[2]}
    r = {"mcq_acc": retain[0], "rougeL": retain[1], "cloze_acc": retain[2]}
    return {"forget": f, "test": f, "retain": r, "general": r}


# K = mean(max(0, (mcq - 1/4) / (3/4)), rougeL, cloze); F = K(forget), U = K(retain) here
VANILLA = subsets((1.0, 0.9, 0.8), (0.95, 0.85, 0.8))  # F_v = 0.9, U_v = (14/15+1.65)/3
R_FORGET, R_RETAIN = (0.4, 0.3, 0.0), (0.85, 0.75, 0.7)
RETRAIN = subsets(R_FORGET, R_RETAIN)  # F_r = (0.2 + 0.3) / 3 = 1/6
F_V, F_R = 0.9, 0.5 / 3
U_R = (0.8 + 0.75 + 0.7) / 3


def test_knowledge_score_counts_mcq_above_chance():
    assert knowledge_score({"mcq_acc": 0.25, "rougeL": 0.0, "cloze_acc": 0.0}) == 0.0
    assert knowledge_score({"mcq_acc": 1.0, "rougeL": 0.5, "cloze_acc": 0.0}) == pytest.approx(0.5)
    assert knowledge_score(RETRAIN["forget"]) == pytest.approx(F_R)
    assert knowledge_score(RETRAIN["retain"]) == pytest.approx(U_R)
    # a task without questions (a small subsample) is left out of the mean
    assert knowledge_score({"mcq_acc": 1.0, "rougeL": 0.5, "cloze_acc": None}) == 0.75


def test_retrain_scores_exactly_one_and_vanilla_zero():
    assert ues(RETRAIN, RETRAIN, VANILLA) == 1.0
    assert ues(VANILLA, RETRAIN, VANILLA) == 0.0


def test_hand_computed_halfway_model():
    # forget side halfway between vanilla and retrain: f = 1 - (F - F_r)/(F_v - F_r) = 1/2;
    # utility 0.9 of retrain's: u = 0.9 -> UES = 2 * 0.5 * 0.9 / 1.4
    f_mid = (F_V + F_R) / 2  # as rougeL = cloze = f_mid and mcq at (3/4) f_mid + 1/4
    model = subsets(
        (0.75 * f_mid + 0.25, f_mid, f_mid), (0.25 + 0.75 * 0.9 * U_R, 0.9 * U_R, 0.9 * U_R)
    )
    assert ues(model, RETRAIN, VANILLA) == pytest.approx(2 * 0.5 * 0.9 / 1.4)


def test_over_forgetting_is_not_rewarded():
    # forgetting everything (F = 0 < F_r) at retrain's utility: f = 1 - F_r / (F_v - F_r)
    wiped = subsets((0.25, 0.0, 0.0), R_RETAIN)
    f = 1 - F_R / (F_V - F_R)
    assert ues(wiped, RETRAIN, VANILLA) == pytest.approx(2 * f / (f + 1))
    assert ues(wiped, RETRAIN, VANILLA) < ues(RETRAIN, RETRAIN, VANILLA)
    # the former score rewarded it above the retrained model
    assert ues_vanilla(wiped, VANILLA) > ues_vanilla(RETRAIN, VANILLA)


def test_under_and_over_forgetting_are_both_distances_to_retrain():
    d = 0.1
    under = subsets((0.25, F_R + d, F_R + d), (0.85, 0.75, 0.7))
    over = subsets((0.25, F_R - d, F_R - d), (0.85, 0.75, 0.7))
    # chance-level MCQ: K = 2 (F_r +- d) / 3 = F_r +- d + (-F_r -+ d) / 3
    for m, k in ((under, 2 * (F_R + d) / 3), (over, 2 * (F_R - d) / 3)):
        f = 1 - abs(k - F_R) / (F_V - F_R)
        assert ues(m, RETRAIN, VANILLA) == pytest.approx(2 * f / (f + 1))


def test_utility_above_retrain_is_capped():
    better = subsets(R_FORGET, (1.0, 1.0, 1.0))
    assert ues(better, RETRAIN, VANILLA) == 1.0


def test_nothing_to_forget_leaves_ues_undefined():
    """Issue #23: where vanilla's forget side is not above retrain's, UES is None and the
    reason names both forget-side scores (it used to give a number on a fallback scale)."""
    model = subsets((0.25, 0.0, 0.0), R_RETAIN)
    assert ues(model, RETRAIN, RETRAIN) is None
    why = ues_undefined(RETRAIN, RETRAIN)
    assert why.startswith("nothing to forget") and f"{F_R:.3f}" in why
    assert ues_undefined(RETRAIN, VANILLA) is None
    assert ues(RETRAIN, RETRAIN, VANILLA) == 1.0


def test_ues_in_unit_interval():
    grid = [0.0, 0.25, 0.6, 1.0]
    for a, b, c, d in itertools.product(grid, repeat=4):
        m = subsets((a, b, b), (c, d, d))
        assert 0.0 <= ues(m, RETRAIN, VANILLA) <= 1.0
        assert 0.0 <= ues_vanilla(m, VANILLA) <= 1.0


def test_ues_vanilla_edge_cases():
    assert ues_vanilla(VANILLA, VANILLA) == 0.0
    assert ues_vanilla(subsets((0.25, 0.0, 0.0), (0.25, 0.0, 0.0)), VANILLA) == 0.0
    assert ues_vanilla(subsets((0.25, 0.0, 0.0), (0.95, 0.85, 0.8)), VANILLA) == pytest.approx(1.0)
    # forget side halves (0.9 -> 0.45), utility unchanged: 2 * 0.5 * 1 / 1.5
    half = subsets((0.25, 0.45, 0.9), (0.95, 0.85, 0.8))
    assert ues_vanilla(half, VANILLA) == pytest.approx(2 * 0.5 / 1.5)
