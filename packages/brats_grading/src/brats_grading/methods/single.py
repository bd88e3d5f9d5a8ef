"""``single-<m>``: one MC3 + dual-attention branch on one modality, trained with CE."""

from __future__ import annotations

from brats_grading.config import MODALITIES
from brats_grading.methods.base import one_stage, register
from medcommon.config import replace_nested

for _mod in MODALITIES:
    register(
        f"single-{_mod}",
        f"one MC3 + dual-attention branch on {_mod}",
        lambda c, m=_mod: replace_nested(c, model={"inputs": "single", "modality": m}),
        one_stage,
    )
