"""``early-fusion``: one branch on the 4-channel stack of all modalities, trained with CE."""

from __future__ import annotations

from brats_grading.methods.base import one_stage, register
from medcommon.config import replace_nested

register(
    "early-fusion",
    "one branch on the 4-channel stack",
    lambda c: replace_nested(c, model={"inputs": "early"}),
    one_stage,
)
