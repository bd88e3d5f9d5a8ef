"""``late-fusion``: one branch per modality, each trained with its own CE; mean of probabilities."""

from __future__ import annotations

from brats_grading.methods.base import one_stage, register
from medcommon.config import replace_nested

register(
    "late-fusion",
    "four independently trained branches, mean of probabilities",
    lambda c: replace_nested(c, model={"inputs": "branches", "fusion": "mean"}),
    one_stage,
)
