"""Our Unlearning Efficiency Score (the paper's formula is not public).

Definition (all scores in [0, 1]):

1. A subset's *knowledge score* is the mean of its three task scores, with multiple
   choice rescaled above chance so that guessing counts as knowing nothing:
   ``K = mean(max(0, (mcq_acc - 1/4) / (3/4)), rougeL, cloze_acc)``.
2. Forget side ``F = mean(K_forget, K_test)``; utility side ``U = mean(K_retain, K_general)``.
3. Against the vanilla model ``v`` (which the unlearning started from):
   ``f = clip((F_v - F) / F_v, 0, 1)``  the share of forget-side knowledge removed;
   ``u = clip(U / U_v, 0, 1)``          the share of utility kept.
4. ``UES = 2 f u / (f + u)`` (0 when ``f + u = 0``): the harmonic mean, as F1.

Rationale: a method must both forget and keep utility; the harmonic mean is high only
when both are, so trading all utility for forgetting (or doing nothing) scores 0. The
vanilla model has ``f = 0`` hence ``UES = 0``; a model that forgets everything and
retains nothing has ``u = 0`` hence ``UES = 0``; a model that removes all forget-side
knowledge at no utility cost scores 1. The test subset (paraphrases, other images)
counts toward forgetting so that a method that only suppresses the exact training
strings is not fully rewarded.
"""

from __future__ import annotations

from collections.abc import Mapping

MCQ_CHANCE = 0.25


def knowledge_score(metrics: Mapping[str, float]) -> float:
    """Mean of chance-corrected MCQ accuracy, ROUGE-L and cloze accuracy of one subset."""
    mcq = max(0.0, (metrics["mcq_acc"] - MCQ_CHANCE) / (1 - MCQ_CHANCE))
    return (mcq + metrics["rougeL"] + metrics["cloze_acc"]) / 3.0


def forget_utility(subsets: Mapping[str, Mapping[str, float]]) -> tuple[float, float]:
    """``(F, U)``: forget-side and utility-side knowledge (see module docstring)."""
    f = (knowledge_score(subsets["forget"]) + knowledge_score(subsets["test"])) / 2
    u = (knowledge_score(subsets["retain"]) + knowledge_score(subsets["general"])) / 2
    return f, u


def ues(
    subsets: Mapping[str, Mapping[str, float]], vanilla: Mapping[str, Mapping[str, float]]
) -> float:
    """The Unlearning Efficiency Score of a model given its and the vanilla model's subset metrics."""
    f_model, u_model = forget_utility(subsets)
    f_van, u_van = forget_utility(vanilla)
    forgot = min(1.0, max(0.0, (f_van - f_model) / f_van)) if f_van > 0 else 0.0
    kept = min(1.0, max(0.0, u_model / u_van)) if u_van > 0 else 0.0
    return 0.0 if forgot + kept == 0 else 2 * forgot * kept / (forgot + kept)
