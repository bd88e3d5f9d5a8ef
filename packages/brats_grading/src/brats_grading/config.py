"""Configs: frozen dataclasses with the paper's defaults, and accessors of the presets.

The presets are data files, ``packages/brats_grading/configs/<preset>.yaml``
(:mod:`medcommon.presets`), each with up to three sections: ``run`` (:class:`RunConfig`),
``synth`` (:class:`SynthConfig`) and ``benchmark`` (:class:`BenchmarkConfig`). ``demo``
extends ``small``: the same data and training sizes, a smaller benchmark.

The paper (Xu et al., arXiv 2401.09029) publishes no code and few numbers; every
value below that it does not state is our choice, listed in the README under
"Choices where the paper is silent".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medcommon.errors import InputError
from medcommon.presets import Presets

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")


@dataclass(frozen=True)
class ModelConfig:
    """The grading network (see :class:`brats_grading.model.GradingNet`).

    ``inputs``: ``single`` = one branch on ``modality``; ``early`` = one branch on the
    4-channel stack; ``branches`` = one branch per modality, fused by ``fusion``:
    ``reliability`` weights the branch probabilities by ``branch_weights`` (one per
    modality, fitted on an inner validation split by :func:`brats_grading.train.fit_method`;
    uniform until fitted), ``primary-weighted`` gives ``primary_weight`` to the primary and
    splits the rest evenly, ``mean`` is the plain average.
    Backbone: MC3 (Tran et al. 2018): a stem ``(3,7,7)`` stride ``(1,2,2)``, then
    ``len(widths)`` residual layers; the first ``full3d_layers`` use 3x3x3 convolutions,
    the rest 1x3x3 with stride ``(1,2,2)`` (never striding over slices).
    ``checkpoint_activations``: activation checkpointing of the stem and each MC3 layer
    (``torch.utils.checkpoint``): their inner activations are recomputed in the
    backward pass instead of stored (less memory, about one more forward of compute).
    ``align_head``: each branch gets a linear projection (identity-initialised) through
    which its features are aligned to the teacher's in CMG's stage 2 (issue #11).
    """

    modalities: tuple[str, ...] = MODALITIES
    inputs: Literal["single", "early", "branches"] = "branches"
    modality: str = "t1ce"
    stem_channels: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    full3d_layers: int = 1
    attention: bool = True
    attention_reduction: int = 8
    dropout: float = 0.2
    primary: str = "t1ce"
    fusion: Literal["reliability", "primary-weighted", "mean"] = "reliability"
    primary_weight: float = 0.5
    branch_weights: tuple[float, ...] = ()
    num_classes: int = 2
    checkpoint_activations: bool = False
    align_head: bool = False

    def __post_init__(self) -> None:
        for field_name, names in (
            ("modalities", self.modalities),
            ("modality", (self.modality,)),
            ("primary", (self.primary,)),
        ):
            for name in names:
                if name not in MODALITIES:
                    raise InputError(
                        f"model.{field_name}",
                        f"unknown modality {name!r}; use {', '.join(MODALITIES)}",
                    )
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise InputError(
                "model.modalities", f"need distinct modalities, got {list(self.modalities)}"
            )
        if self.inputs == "branches" and self.primary not in self.modalities:
            raise InputError(
                "model.primary",
                f"{self.primary!r} is not among model.modalities ({', '.join(self.modalities)})",
            )
        sizes = {"stem_channels": (self.stem_channels,), "widths": self.widths}
        sizes |= {"blocks": self.blocks, "attention_reduction": (self.attention_reduction,)}
        for name, values in sizes.items():
            if any(int(v) < 1 for v in values):
                raise InputError(f"model.{name}", f"need positive sizes, got {values}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError("model.dropout", f"must be in [0, 1), got {self.dropout}")
        if self.num_classes != 2:
            raise InputError("model.num_classes", "grading is HGG vs LGG: must be 2")
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise InputError("model.widths", "widths and blocks need the same, non-zero length")
        if not 0 <= self.full3d_layers <= len(self.widths):
            raise InputError("model.full3d_layers", f"must be in 0..{len(self.widths)}")
        if not 0.0 <= self.primary_weight <= 1.0:
            raise InputError("model.primary_weight", "must be in [0, 1]")
        if self.branch_weights and (
            len(self.branch_weights) != len(self.modalities) or min(self.branch_weights) < 0
        ):
            raise InputError(
                "model.branch_weights", f"need {len(self.modalities)} non-negative weights"
            )


@dataclass(frozen=True)
class GuidanceConfig:
    """Cross-modality guidance: the primary branch teaches the secondary ones (stage 2).

    ``temperature`` softens both distributions in the distillation KL (Hinton et al.
    2015, scaled by T^2); ``feature_weight`` scales the alignment of the
    L2-normalised pooled features; ``freeze_primary`` keeps the stage-1 primary fixed.
    ``mid_weight`` scales the same alignment on the pooled output of the second-to-last
    MC3 layer (intermediate-feature guidance, issue #11; 0 = off, the paper's setting).
    ``teacher`` (issue #21's controls; ``case`` is the paper's): what the secondaries
    are guided towards. ``shuffled``: the teacher's logits and features of another
    case of the same grade in the batch (each case's partner drawn anew every step),
    so the guidance keeps its spread and its class information but loses which case
    it describes; ``class-mean``: the mean of the teacher's tempered distributions and
    of its features over the batch's cases of the same grade, i.e. label smoothing at
    the teacher's own average strength (and alignment to a class centroid), with no
    case-level information (:func:`brats_grading.losses.control_teacher`).
    """

    temperature: float = 4.0
    kd_weight: float = 1.0
    feature_weight: float = 1.0
    ce_weight: float = 1.0
    freeze_primary: bool = True
    mid_weight: float = 0.0
    teacher: Literal["case", "shuffled", "class-mean"] = "case"

    def __post_init__(self) -> None:
        if self.teacher not in ("case", "shuffled", "class-mean"):
            raise InputError(
                "guidance.teacher",
                f"unknown teacher {self.teacher!r}; use case, shuffled or class-mean",
            )
        if self.teacher != "case" and self.mid_weight > 0:
            raise InputError(
                "guidance.teacher", "the controls apply to the paper's terms: set mid_weight=0"
            )
        if not self.temperature > 0:
            raise InputError("guidance.temperature", f"must be > 0, got {self.temperature}")
        for name in ("kd_weight", "feature_weight", "ce_weight", "mid_weight"):
            if not getattr(self, name) >= 0:
                raise InputError(f"guidance.{name}", f"must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``train`` run needs; saved resolved in ``RUN/config.json`` (``"config"``).

    ``schedule_steps`` is the period of every stage's cosine learning-rate decay;
    0 (default) means that stage's own number of steps, so the rate reaches 0 at
    its end. Fixing it lets ``train --resume --set steps=N`` extend a finished run
    into exactly the run one would have trained straight to N steps.
    ``mixed_precision``: autocast of every training stage through Accelerate
    (:class:`medcommon.train.TrainConfig`): ``bf16`` (CPU or GPU) or ``fp16`` (GPU only,
    with a gradient scaler); weights and optimizer state stay float32.
    """

    shape: tuple[int, int, int] = (128, 128, 128)
    model: ModelConfig = field(default_factory=ModelConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    folds: int = 5
    fold: int = 0
    split_seed: int = 0
    imbalance: Literal["weighted-loss", "sampler", "none"] = "weighted-loss"
    val_fraction: float = 1 / 3
    steps: int = 3000
    primary_steps: int = 3000
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    flip: bool = True
    log_every: int = 10
    checkpoint_every: int = 500
    schedule_steps: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 4:
            raise InputError("shape", f"need three sizes >= 4 (slices, y, x), got {self.shape}")
        if self.folds < 2:
            raise InputError("folds", "need at least 2 folds")
        if not 0 <= self.fold < self.folds:
            raise InputError("fold", f"must be in 0..{self.folds - 1}, got {self.fold}")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError("val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        if self.steps < 0 or self.primary_steps < 0:
            raise InputError("steps", "must be >= 0")
        if self.schedule_steps < 0:
            raise InputError("schedule_steps", "must be >= 0 (0: each stage's own steps)")
        if self.batch_size < 1:
            raise InputError("batch_size", f"must be positive, got {self.batch_size}")
        if not self.lr > 0:
            raise InputError("lr", f"must be > 0, got {self.lr}")
        for name in ("weight_decay", "log_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise InputError(name, f"must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic BraTS-like set (see :mod:`brats_grading.synth`)."""

    hgg: int = 34
    lgg: int = 10
    shape: tuple[int, int, int] = (24, 40, 40)


@dataclass(frozen=True)
class BenchmarkConfig:
    """What ``benchmark`` runs (see :func:`brats_grading.benchmark.run_benchmark`).

    ``methods``: the methods compared (empty: every registered method); ``folds``: the
    folds evaluated when ``--folds`` is not given (empty: all K folds of the run preset).
    """

    methods: tuple[str, ...] = ()
    folds: tuple[int, ...] = ()


PRESETS = Presets("brats_grading")
"""The package's preset files (``configs/*.yaml``)."""


def run_preset(name: str) -> RunConfig:
    """The training config of a preset (before the method adjusts it)."""
    return PRESETS.section(name, "run", RunConfig)


def synth_preset(name: str) -> SynthConfig:
    """How many cases of which size ``synth --preset`` writes (HGG:LGG about 3.4:1)."""
    return PRESETS.section(name, "synth", SynthConfig)


def benchmark_preset(name: str) -> BenchmarkConfig:
    """The methods and folds ``benchmark --preset`` runs."""
    return PRESETS.section(name, "benchmark", BenchmarkConfig)
