"""Metrics shared by the method packages.

Segmentation (:mod:`.segmentation`), classification and bias-aware AUCs
(:mod:`.classification`), the continual-learning stage x site matrix
(:mod:`.continual`), text overlap (:mod:`.text`) and membership inference
(:mod:`.privacy`).
"""

from medcommon.metrics.classification import (
    accuracy,
    ap,
    auc,
    bias_aucs,
    binary_confusion,
    f1,
    group_accuracy,
    sensitivity,
    specificity,
    youden_threshold,
)
from medcommon.metrics.continual import continual_summary
from medcommon.metrics.privacy import (
    mia_auc,
    min_k_plus_plus_score,
    min_k_score,
    privleak,
    zlib_entropy,
    zlib_score,
)
from medcommon.metrics.segmentation import dice, hd95
from medcommon.metrics.text import exact_match, rouge_l, substring_match

__all__ = [
    "accuracy",
    "ap",
    "auc",
    "bias_aucs",
    "binary_confusion",
    "continual_summary",
    "dice",
    "exact_match",
    "f1",
    "group_accuracy",
    "hd95",
    "mia_auc",
    "min_k_plus_plus_score",
    "min_k_score",
    "privleak",
    "rouge_l",
    "sensitivity",
    "specificity",
    "substring_match",
    "youden_threshold",
    "zlib_entropy",
    "zlib_score",
]
