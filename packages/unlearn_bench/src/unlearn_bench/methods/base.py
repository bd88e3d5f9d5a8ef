"""What every unlearning method shares: its config fields, the registry, the forward pass.

Adding a method is three steps (the open-unlearning recipe): a file with a frozen
config dataclass and a :class:`Method` subclass overriding :meth:`Method.loss`,
``@METHODS.register("name")`` on it, and an import line in ``methods/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch.nn.parallel import DistributedDataParallel

from medcommon.registry import Registry
from unlearn_bench.config import ScaleConfig, unlearn_preset

METHODS: Registry[type[Method]] = Registry("method")


@dataclass(frozen=True)
class UnlearnConfig:
    """Common fields; defaults are MLLMU-Bench's (1 epoch, lr 2e-5, batch 4)."""

    lr: float = 2e-5
    epochs: float = 1.0
    batch_size: int = 4
    max_grad_norm: float | None = 1.0
    log_every: int = 5
    checkpoint_every: int = 100  # steps between checkpoints for --resume (0: only at the end)
    # "answer": losses count answer tokens; "full": every non-padding token (MLLMU-Bench's
    # baselines, whose labels are the whole input with the padding masked).
    loss_tokens: Literal["answer", "full"] = "answer"
    scale: ScaleConfig = field(default_factory=ScaleConfig)  # precision, LoRA, memory savers


def forward(model: torch.nn.Module, batch: dict[str, Any], hidden: bool = False):
    """Run the Llava on a collated batch (see :func:`unlearn_bench.data.collate`)."""
    return forward_all(model, batch, hidden=hidden)[0]


def forward_all(model: torch.nn.Module, *batches: dict[str, Any], hidden: bool = False) -> tuple:
    """The Llava's outputs on several batches (forget and retain), in one call of ``model``.

    ``model`` is a Llava, or a :class:`Forwards` (as the unlearn command trains it),
    possibly inside DDP.
    """
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    if isinstance(inner, Forwards):
        return model(*batches, hidden=hidden)
    return tuple(_llava_forward(model, b, hidden) for b in batches)


def _llava_forward(model: torch.nn.Module, batch: dict[str, Any], hidden: bool):
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        output_hidden_states=hidden,
        use_cache=False,
    )


class Forwards(torch.nn.Module):
    """The trained Llava, run on several batches in one ``forward`` call.

    Why: DDP (which needs ``find_unused_parameters`` here, since a text-only share of a
    batch leaves the vision tower unused) finds the unused parameters from the outputs of
    the last forward call before a backward. With two calls (forget, then retain), a
    parameter that only the first one used is marked unused, then gets its gradient
    too: "marked as ready twice". One call per step avoids it; each batch is still its
    own Llava call, so the numbers are those of separate calls.
    """

    def __init__(self, llava: torch.nn.Module) -> None:
        super().__init__()
        self.llava = llava

    def forward(self, *batches: dict[str, Any], hidden: bool = False) -> tuple:
        return tuple(_llava_forward(self.llava, b, hidden) for b in batches)


class Method:
    """An unlearning objective.

    Attributes:
        config_class: the method's frozen config dataclass.
        needs_reference: a frozen copy of the vanilla model is passed as ``ref``.
        uses_retain: batches are ``{"forget": ..., "retain": ...}`` instead of forget only.
        description: one line for ``METHODS.describe(name)`` and the CLI help.
    """

    config_class: ClassVar[type] = UnlearnConfig
    needs_reference: ClassVar[bool] = False
    uses_retain: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, cfg: Any, ref: torch.nn.Module | None = None, seed: int = 0) -> None:
        self.cfg = cfg
        self.ref = ref
        self.seed = seed

    @classmethod
    def preset_config(cls, preset: str) -> Any:
        """The method's config for a preset: its ``unlearn`` section, then its
        ``methods.<name>`` changes (``full`` = the paper's defaults)."""
        name = next((n for n in METHODS if METHODS.get(n) is cls), None)
        return unlearn_preset(preset, cls.config_class, name, METHODS.names())

    def forget_answer(self, item: dict[str, Any]) -> str | None:
        """The answer to train the forget question toward (None keeps the original)."""
        return None

    def setup(self, model: torch.nn.Module) -> None:
        """Called once before training (e.g. to draw RMU's random direction)."""

    def loss(self, model: torch.nn.Module, batch: dict[str, Any], ctx: Any) -> dict[str, Any]:
        """``{"loss": scalar, **logs}`` for one micro-batch (this process's share of it under DDP).

        Run the model once per call (:func:`forward_all` for forget + retain), and take
        means over tokens with ``ddp=True`` (:func:`unlearn_bench.losses.token_mean`):
        then 2 processes give the weights of 1 at the same global batch.
        """
        raise NotImplementedError

    @torch.no_grad()
    def holds_reference(self) -> bool:
        """Whether the reference model is kept during training (``needs_reference``
        methods whose reference enters only through fixed per-sequence quantities say
        False when those were computed once, before training; see :mod:`.npo`)."""
        return self.needs_reference

    def ref_forward(self, batch: dict[str, Any], hidden: bool = False):
        assert self.ref is not None, "this method needs a reference model"
        return forward(self.ref, batch, hidden=hidden)
