"""Text overlap metrics for generated answers."""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=2)
def _scorer(stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer)


def rouge_l(
    prediction: str, reference: str, stemmer: bool = False, measure: str = "fmeasure"
) -> float:
    """ROUGE-L (longest common subsequence of tokens), via ``rouge-score``.

    ``stemmer``: Porter-stem the tokens first ("nodules" = "nodule"), as MLLMU-Bench
    (``RougeScorer(["rougeL"], use_stemmer=True)``) and open-unlearning do.
    ``measure``: ``"fmeasure"`` (MLLMU-Bench) or ``"recall"`` (LCS / reference length:
    open-unlearning's ``rougeL_recall``), or ``"precision"``.
    """
    if measure not in ("fmeasure", "recall", "precision"):
        raise ValueError(f"measure must be fmeasure, recall or precision, got {measure!r}")
    return float(getattr(_scorer(stemmer).score(reference, prediction)["rougeL"], measure))


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the answers agree after lower-casing and dropping punctuation, else 0.0."""
    return float(_normalise(prediction) == _normalise(reference))


def substring_match(prediction: str, reference: str) -> float:
    """1.0 if the normalised reference occurs in the normalised prediction, else 0.0."""
    ref = _normalise(reference)
    return float(bool(ref) and ref in _normalise(prediction))
