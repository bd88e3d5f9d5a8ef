"""Our Unlearning Efficiency Score (the paper's formula is not public).

Definition (all scores in [0, 1]):

1. A subset's *knowledge score* is the mean of its three task scores, with multiple
   choice rescaled above chance so that guessing counts as knowing nothing:
   ``K = mean(max(0, (mcq_acc - 1/4) / (3/4)), rougeL, cloze_acc)``.
2. Forget side ``F = mean(K_forget, K_test)``; utility side ``U = mean(K_retain, K_general)``.
3. :func:`ues` is anchored on the retrained model ``r`` (trained on retain only, the
   gold standard), with the vanilla model ``v`` setting the scale of the forget side:
   ``f = clip(1 - |F - F_r| / (F_v - F_r), 0, 1)``  how close the forget side is to retrain's;
   ``u = clip(U / U_r, 0, 1)``                     the share of retrain's utility kept.
   If ``F_v <= F_r`` there is nothing to forget: UES is undefined (None, with the reason
   from :func:`ues_undefined`; issue #23: it used to give a number there, scaled by
   ``max(F_r, 1 - F_r)``). If ``U_r = 0``, ``u = 1``.
4. ``UES = 2 f u / (f + u)`` (0 when ``f + u = 0``): the harmonic mean, as F1.

Properties, by construction: the retrained model scores exactly 1 (``F = F_r``,
``U = U_r``); the vanilla model scores 0 (``f = 0``); forgetting *beyond* the
retrained model (``F < F_r``: it now also fails questions that a model never trained
on the forget set answers, e.g. from the image or general knowledge) is penalised like
forgetting too little, so over-forgetting is not rewarded; a model that keeps nothing
(``U = 0``) scores 0. The test subset (paraphrases, other images) counts toward the
forget side so that suppressing only the exact training strings is not fully rewarded.

:func:`ues_vanilla` is the former score, anchored on the vanilla model only
(``f = clip((F_v - F) / F_v, 0, 1)``, ``u = clip(U / U_v, 0, 1)``). It rewards
over-forgetting and gives the retrained model less than 1 (0.78-0.85 measured); it is
kept as ``ues_vanilla`` for comparison with earlier results.
"""

from __future__ import annotations

from collections.abc import Mapping

MCQ_CHANCE = 0.25

Subsets = Mapping[str, Mapping[str, float]]


def knowledge_score(metrics: Mapping[str, float | None]) -> float:
    """Mean of chance-corrected MCQ accuracy, ROUGE-L and cloze accuracy of one subset.

    A task with no question in the (sub-sampled) subset is None and left out of the mean.
    """
    mcq = metrics["mcq_acc"]
    scores = [
        None if mcq is None else max(0.0, (mcq - MCQ_CHANCE) / (1 - MCQ_CHANCE)),
        metrics["rougeL"],
        metrics["cloze_acc"],
    ]
    present = [v for v in scores if v is not None]
    return sum(present) / len(present) if present else 0.0


def forget_utility(subsets: Subsets) -> tuple[float, float]:
    """``(F, U)``: forget-side and utility-side knowledge (see module docstring)."""
    f = (knowledge_score(subsets["forget"]) + knowledge_score(subsets["test"])) / 2
    u = (knowledge_score(subsets["retain"]) + knowledge_score(subsets["general"])) / 2
    return f, u


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def _harmonic(forgot: float, kept: float) -> float:
    return 0.0 if forgot + kept == 0 else 2 * forgot * kept / (forgot + kept)


def ues_undefined(retrain: Subsets, vanilla: Subsets) -> str | None:
    """Why UES has no value for these anchors (None when it has one): the vanilla model's
    forget side is not above the retrained model's, so there is nothing to forget."""
    f_ret, _ = forget_utility(retrain)
    f_van, _ = forget_utility(vanilla)
    if f_van > f_ret:
        return None
    return (
        f"nothing to forget: vanilla's forget-side knowledge F = {f_van:.3f} is not above "
        f"the retrained model's {f_ret:.3f}"
    )


def ues(subsets: Subsets, retrain: Subsets, vanilla: Subsets) -> float | None:
    """The UES of a model, anchored on the retrained model (1 for retrain, 0 for vanilla);
    None where vanilla has nothing to forget (:func:`ues_undefined` says why)."""
    if ues_undefined(retrain, vanilla) is not None:
        return None
    f_model, u_model = forget_utility(subsets)
    f_ret, u_ret = forget_utility(retrain)
    f_van, _ = forget_utility(vanilla)
    scale = f_van - f_ret
    forgot = _clip01(1.0 - abs(f_model - f_ret) / scale)
    kept = _clip01(u_model / u_ret) if u_ret > 0 else 1.0
    return _harmonic(forgot, kept)


def ues_vanilla(subsets: Subsets, vanilla: Subsets) -> float:
    """The former UES, anchored on the vanilla model only (see module docstring)."""
    f_model, u_model = forget_utility(subsets)
    f_van, u_van = forget_utility(vanilla)
    forgot = _clip01((f_van - f_model) / f_van) if f_van > 0 else 0.0
    kept = _clip01(u_model / u_van) if u_van > 0 else 0.0
    return _harmonic(forgot, kept)
