"""The unlearning methods: the paper's five (GA, GradDiff, KL-min, NPO, IDK) plus SimNPO and RMU."""

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from unlearn_bench.methods import ga, grad_diff, idk, kl_min, npo, rmu, simnpo  # noqa: F401  (registration)
from unlearn_bench.methods.base import (
    METHODS,
    Forwards,
    Method,
    UnlearnConfig,
    forward,
    forward_all,
)


def method_config(
    name: str, preset: str, file: str | Path | None = None, overrides: Iterable[str] = ()
) -> Any:
    """Method ``name``'s config: its preset <- ``--config`` file <- ``--set`` overrides."""
    from medcommon.config import resolve_config

    cls = METHODS.get(name)
    return resolve_config(
        cls.config_class, base=cls.preset_config(preset), file=file, overrides=overrides
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
    "method_config",
]
