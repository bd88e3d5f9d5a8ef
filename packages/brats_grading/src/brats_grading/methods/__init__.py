"""The methods of ``--method``, one module each; importing this package registers them all.

Each method is a config adjustment plus training stages (:mod:`.base`):

| method | model | stages |
|---|---|---|
| ``single-<m>`` | one branch on modality m | CE |
| ``early-fusion`` | one branch on the 4-channel stack | CE |
| ``late-fusion`` | four branches, mean of probabilities | sum of per-branch CE (independent) |
| ``cmg`` | four branches + dual attention, reliability-weighted fusion | 1: primary CE; 2: guided secondaries |
| ``cmg-no-attention`` | as cmg, no dual attention | as cmg |
| ``cmg-no-guidance`` | as cmg | as cmg with ``kd_weight = feature_weight = 0`` |
"""

import importlib

# Imported by name, in this order: registration order is the order of --help, of
# the benchmark's rows and of its report.
for _module in ("single", "early_fusion", "late_fusion", "cmg"):
    importlib.import_module(f"{__name__}.{_module}")

from brats_grading.methods.base import (  # noqa: E402
    METHODS,
    Method,
    Stage,
    StepFn,
    ce_step,
    one_stage,
    register,
)
from brats_grading.methods.cmg import cmg_stages, guided_step  # noqa: E402

__all__ = [
    "METHODS",
    "Method",
    "Stage",
    "StepFn",
    "ce_step",
    "cmg_stages",
    "guided_step",
    "one_stage",
    "register",
]
