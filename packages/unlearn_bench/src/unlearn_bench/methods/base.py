"""What every unlearning method shares: its config fields, the registry, the forward pass.

Adding a method is three steps (the open-unlearning recipe): a file with a frozen
config dataclass and a :class:`Method` subclass overriding :meth:`Method.loss`,
``@METHODS.register("name")`` on it, and an import line in ``methods/__init__.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from medcommon.registry import Registry
from unlearn_bench.config import check_preset

METHODS: Registry[type[Method]] = Registry("method")


@dataclass(frozen=True)
class UnlearnConfig:
    """Common fields; defaults are MLLMU-Bench's (1 epoch, lr 2e-5, batch 4)."""

    lr: float = 2e-5
    epochs: float = 1.0
    batch_size: int = 4
    max_grad_norm: float | None = 1.0
    log_every: int = 5


# tiny/small: the tiny model needs a far larger step than a LoRA-tuned 7B model.
PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "tiny": {"lr": 1e-3, "epochs": 1.0, "batch_size": 8, "log_every": 2},
    "small": {"lr": 1e-4, "epochs": 3.0, "batch_size": 8},
    "full": {},
}


def forward(model: torch.nn.Module, batch: dict[str, Any], hidden: bool = False):
    """Run the Llava on a collated batch (see :func:`unlearn_bench.data.collate`)."""
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        output_hidden_states=hidden,
        use_cache=False,
    )


class Method:
    """An unlearning objective.

    Attributes:
        config_class: the method's frozen config dataclass.
        needs_reference: a frozen copy of the vanilla model is passed as ``ref``.
        uses_retain: batches are ``{"forget": ..., "retain": ...}`` instead of forget only.
        preset_overrides: per-preset changes on top of :data:`PRESET_OVERRIDES`.
        description: one line for ``METHODS.describe(name)`` and the CLI help.
    """

    config_class: ClassVar[type] = UnlearnConfig
    needs_reference: ClassVar[bool] = False
    uses_retain: ClassVar[bool] = False
    preset_overrides: ClassVar[dict[str, dict[str, Any]]] = {}
    description: ClassVar[str] = ""

    def __init__(self, cfg: Any, ref: torch.nn.Module | None = None, seed: int = 0) -> None:
        self.cfg = cfg
        self.ref = ref
        self.seed = seed

    @classmethod
    def preset_config(cls, preset: str) -> Any:
        """The method's config for a preset (``full`` = the paper's defaults)."""
        check_preset(preset)
        changes = {**PRESET_OVERRIDES[preset], **cls.preset_overrides.get(preset, {})}
        return dataclasses.replace(cls.config_class(), **changes)

    def forget_answer(self, item: dict[str, Any]) -> str | None:
        """The answer to train the forget question toward (None keeps the original)."""
        return None

    def setup(self, model: torch.nn.Module) -> None:
        """Called once before training (e.g. to draw RMU's random direction)."""

    def loss(self, model: torch.nn.Module, batch: dict[str, Any], ctx: Any) -> dict[str, Any]:
        """``{"loss": scalar, **logs}`` for one micro-batch."""
        raise NotImplementedError

    @torch.no_grad()
    def ref_forward(self, batch: dict[str, Any], hidden: bool = False):
        assert self.ref is not None, "this method needs a reference model"
        return forward(self.ref, batch, hidden=hidden)
