"""The unlearning methods: the paper's five (GA, GradDiff, KL-min, NPO, IDK) plus SimNPO and RMU."""

from unlearn_bench.methods import ga, grad_diff, idk, kl_min, npo, rmu, simnpo  # noqa: F401  (registration)
from unlearn_bench.methods.base import (
    METHODS,
    Forwards,
    Method,
    UnlearnConfig,
    forward,
    forward_all,
)

# The paper's five first, then the two additions (the registry itself is in import order).
PAPER_ORDER = ("ga", "grad_diff", "kl_min", "npo", "idk", "simnpo", "rmu")

__all__ = [
    "METHODS",
    "PAPER_ORDER",
    "Forwards",
    "Method",
    "UnlearnConfig",
    "forward",
    "forward_all",
]
