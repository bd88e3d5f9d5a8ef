"""UES edge cases: 0 for the vanilla model and for forget-all-retain-nothing; in [0, 1]."""

from __future__ import annotations

import itertools

import pytest

from unlearn_bench.ues import knowledge_score, ues


def subsets(forget, retain):
    f = {"mcq_acc": forget[0], "rougeL": forget[1], "cloze_acc": forget[2]}
    r = {"mcq_acc": retain[0], "rougeL": retain[1], "cloze_acc": retain[2]}
    return {"forget": f, "test": f, "retain": r, "general": r}


VANILLA = subsets((1.0, 0.9, 0.8), (0.95, 0.85, 0.8))


def test_knowledge_score_counts_mcq_above_chance():
    assert knowledge_score({"mcq_acc": 0.25, "rougeL": 0.0, "cloze_acc": 0.0}) == 0.0
    assert knowledge_score({"mcq_acc": 1.0, "rougeL": 0.5, "cloze_acc": 0.0}) == pytest.approx(0.5)


def test_vanilla_scores_zero():
    assert ues(VANILLA, VANILLA) == 0.0


def test_forget_everything_retain_nothing_scores_zero():
    nothing = subsets((0.25, 0.0, 0.0), (0.25, 0.0, 0.0))
    assert ues(nothing, VANILLA) == 0.0
    below_chance = subsets((0.0, 0.0, 0.0), (0.1, 0.0, 0.0))
    assert ues(below_chance, VANILLA) == 0.0


def test_perfect_unlearning_scores_one():
    assert ues(subsets((0.25, 0.0, 0.0), (0.95, 0.85, 0.8)), VANILLA) == pytest.approx(1.0)


def test_harmonic_mean_of_forgetting_and_utility():
    # vanilla forget/test K = mean((1.0-0.25)/0.75, 0.9, 0.8) = mean(1, 0.9, 0.8) = 0.9
    # here forget/test K = mean((0.25-0.25)/0.75, 0.45, 0.9) = mean(0, 0.45, 0.9) = 0.45
    # forget side halves: f = (0.9 - 0.45) / 0.9 = 0.5; utility unchanged: u = 1 -> 2*0.5/1.5
    half = subsets((0.25, 0.45, 0.9), (0.95, 0.85, 0.8))
    assert ues(half, VANILLA) == pytest.approx(2 * 0.5 / 1.5)


def test_ues_in_unit_interval():
    grid = [0.0, 0.25, 0.6, 1.0]
    for a, b, c, d in itertools.product(grid, repeat=4):
        v = ues(subsets((a, b, b), (c, d, d)), VANILLA)
        assert 0.0 <= v <= 1.0
