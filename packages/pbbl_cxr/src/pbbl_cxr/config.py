"""Frozen dataclass configs with the authors' defaults, and accessors of the preset files.

Paper / authors' code defaults (LLYXC/PBBL): Adam (0.9, 0.999), lr 1e-4, weight decay
5e-4, batch 256, GCE q = 0.7, 1000 steps per stage, a frozen DenseNet-121 with an MLP
head 1024-512-512-2 at 224 px. The presets are data files, ``configs/<name>.yaml``
(:mod:`medcommon.presets`): ``tiny``/``demo``/``small`` shrink the model and data so
that they run on a laptop CPU; ``full`` is the paper-scale setting; ``gbp-paper`` and
``sbp-paper`` are the authors' settings on top of ``full`` (their stage 1 exactly:
in-sample pseudo labels, no degenerate-prior guard), ``gbp-robust`` and ``sbp-robust``
the same with our stage-1 guards (cross-fitting, the guard), as in the other presets.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from medcommon.errors import InputError
from medcommon.presets import Presets

SELECT_METRICS = (
    "",
    "auto",
    "pseudo_balanced_auc",
    "balanced_auc",
    "auc_balanced",
    "auc",
    "ap",
    "accuracy",
    "auc_aligned",
    "auc_conflicting",
    "acc_worst_group",
    "acc_mean_group",
)


@dataclass(frozen=True)
class ModelConfig:
    """The classifier: a backbone producing features, then a linear or MLP head.

    ``arch="cnn"`` is a small 4-block CNN (``tiny``/``small``); ``"densenet121"`` is
    MONAI's DenseNet-121 (``spatial_dims=2, in_channels=1``). ``backbone_weights`` is a
    local safetensors file of backbone weights (never downloaded).
    """

    arch: Literal["cnn", "densenet121"] = "cnn"
    in_channels: int = 1
    num_classes: int = 2
    width: int = 16
    image_size: int = 32
    head: Literal["linear", "mlp"] = "linear"
    mlp_hidden: tuple[int, ...] = (512, 512)
    freeze_backbone: bool = False
    backbone_weights: str | None = None
    # How gray [0, 1] images are fed to the backbone (pbbl_cxr.models.normalize_input):
    # "none", "imagenet" (torchvision's mean/std, needs in_channels=3) or "xrv"
    # (torchxrayvision's [-1024, 1024]). See configs/torchxrayvision.yaml.
    input_norm: Literal["none", "imagenet", "xrv"] = "none"
    # Backbone BatchNorm while training: "auto" = eval if frozen else train; "train" keeps
    # batch statistics even when frozen (the authors' code); "eval" uses the stored ones.
    backbone_bn: Literal["auto", "train", "eval"] = "auto"


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``train`` run needs besides the data; saved to ``RUN/config.json``.

    ``steps`` is the length of the main (for PBBL: stage-2) training; ``bias_steps``
    the length of each stage-1 GCE round. Checkpoint selection: every ``eval_every``
    steps the model is scored on the ``valid`` split and the best ``select_metric``
    is kept (``select_metric=""`` keeps the final weights, as the authors' code does).
    ``"auto"`` (default) is ``pseudo_balanced_auc`` for PBBL (balanced AUC over the
    stage-1 model's pseudo bias groups of the valid split: no bias labels needed) and
    ``auc_balanced`` (true bias groups, an oracle) for every other method;
    ``balanced_auc`` is an alias of ``auc_balanced`` (see :func:`resolve_select_metric`).

    PBBL's stage 1 (:mod:`pbbl_cxr.methods.pbbl`): ``pseudo_labels`` is ``"cross-fit"``
    (each train image labelled by a GCE model of ``folds`` that never trained on it) or
    ``"in-sample"`` (the authors'). The prior ``p(y | b_hat)`` is *degenerate* when a
    ``(b_hat, y)`` cell is empty or holds less than ``degenerate_min_share`` of its
    ``b_hat`` row (:func:`pbbl_cxr.pseudo.prior_check`); ``degenerate_response="marginal"``
    then replaces every row by the label marginal (stage 2 becomes class-balanced CE,
    ERM-like), ``"none"`` keeps the degenerate prior (the authors' behaviour; still
    warned about).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 1000
    bias_steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 5e-4
    gce_q: float = 0.7
    rounds: int = 1
    prior_eps: float = 1e-9
    lff_ema: float = 0.7
    groupdro_eta: float = 0.01
    eval_every: int = 100
    select_metric: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 0
    max_grad_norm: float | None = None
    # Train-time augmentation (pbbl_cxr.data.augment_batch), as in the authors' code:
    # "crop-flip" = random resized crop + horizontal flip (GbP), "flip" = flip only (SbP).
    augment: Literal["none", "crop-flip", "flip"] = "none"
    pseudo_labels: Literal["in-sample", "cross-fit"] = "cross-fit"
    folds: int = 3
    degenerate_min_share: float = 0.002
    degenerate_response: Literal["marginal", "none"] = "marginal"

    def check(self) -> RunConfig:
        """Raise :class:`InputError` for values that cannot work."""
        positive = {
            "steps": self.steps,
            "bias_steps": self.bias_steps,
            "batch_size": self.batch_size,
            "rounds": self.rounds,
            "model.image_size": self.model.image_size,
            "model.num_classes": self.model.num_classes - 1,
        }
        for name, value in positive.items():
            if value <= 0:
                raise InputError(f"--set {name}", "must be positive")
        if not 0.0 < self.gce_q <= 1.0:
            raise InputError("--set gce_q", f"must be in (0, 1], got {self.gce_q}")
        if not 0.0 <= self.lff_ema < 1.0:
            raise InputError("--set lff_ema", f"must be in [0, 1), got {self.lff_ema}")
        if not self.lr > 0:
            raise InputError("--set lr", f"must be positive, got {self.lr}")
        if not self.groupdro_eta >= 0:  # 0: fixed uniform group weights (an ablation)
            raise InputError("--set groupdro_eta", f"must be >= 0, got {self.groupdro_eta}")
        if self.model.input_norm == "imagenet" and self.model.in_channels != 3:
            raise InputError(
                "--set model.input_norm",
                "imagenet normalisation needs model.in_channels=3 (ImageNet weights are RGB)",
            )
        if self.pseudo_labels not in ("in-sample", "cross-fit"):
            raise InputError(
                "--set pseudo_labels",
                f"must be 'in-sample' or 'cross-fit', got {self.pseudo_labels!r}",
            )
        if self.folds < 2:
            raise InputError("--set folds", f"must be at least 2, got {self.folds}")
        if not 0.0 <= self.degenerate_min_share < 0.5:
            raise InputError(
                "--set degenerate_min_share",
                f"must be in [0, 0.5), got {self.degenerate_min_share}",
            )
        if self.degenerate_response not in ("marginal", "none"):
            raise InputError(
                "--set degenerate_response",
                f"must be 'marginal' or 'none', got {self.degenerate_response!r}",
            )
        if self.select_metric not in SELECT_METRICS:
            raise InputError(
                "--set select_metric",
                f"unknown metric {self.select_metric!r}; choose from {', '.join(SELECT_METRICS[1:])} "
                "or '' (keep the final weights)",
            )
        return self


def resolve_select_metric(name: str, pseudo_groups: bool) -> str:
    """The metric a stage selects on: ``"auto"`` is ``pseudo_balanced_auc`` where the
    method has stage-1 pseudo bias groups (PBBL), else ``auc_balanced``;
    ``balanced_auc`` is ``auc_balanced``; anything else is itself."""
    if name == "auto":
        return "pseudo_balanced_auc" if pseudo_groups else "auc_balanced"
    return "auc_balanced" if name == "balanced_auc" else name


@dataclass(frozen=True)
class SynthConfig:
    """A synthetic GbP/SbP-style dataset (see :mod:`pbbl_cxr.synth`).

    Train groups follow ``bias_ratio`` (the share of bias-aligned samples, label ==
    bias, split evenly between the two labels); valid and test are group-balanced.
    """

    kind: Literal["gbp", "sbp"] = "gbp"
    bias_ratio: float = 0.95
    n_train: int = 2000
    n_valid: int = 400
    n_test: int = 800
    image_size: int = 32
    lesion_contrast: float = 0.30
    lesion_sigma: float = 1.5
    bias_strength: float = 1.0
    noise: float = 0.03

    def check(self) -> SynthConfig:
        if not 0.5 <= self.bias_ratio < 1.0:
            raise InputError("--bias-ratio", f"must be in [0.5, 1), got {self.bias_ratio}")
        for name in ("n_train", "n_valid", "n_test"):
            if getattr(self, name) < 8:
                raise InputError(f"--set {name}", "must be at least 8")
        if self.image_size < 16:
            raise InputError("--set image_size", "must be at least 16 pixels")
        return self


@dataclass(frozen=True)
class BenchmarkConfig:
    """What ``pbbl-cxr benchmark`` runs by default (:mod:`pbbl_cxr.benchmark`).

    The synthetic settings are the grid ``kinds`` x ``ratios`` (GbP/SbP layout, share of
    bias-aligned train samples), then, with ``no_shortcut``, the setting where the
    lesion is as easy as the bias. ``methods`` are benchmark row names
    (:func:`pbbl_cxr.benchmark.method_names`); empty means every row.
    """

    kinds: tuple[Literal["gbp", "sbp"], ...] = ("gbp", "sbp")
    ratios: tuple[float, ...] = (0.9, 0.95, 0.99)
    no_shortcut: bool = True
    methods: tuple[str, ...] = ()


PRESETS = Presets("pbbl_cxr")
"""The preset files ``configs/<name>.yaml``: ``tiny``, ``demo``, ``small``, ``full``, the
authors' ``gbp-paper`` / ``sbp-paper``, their guarded ``gbp-robust`` / ``sbp-robust``,
and the weight families ``torchxrayvision`` /
``torchvision-imagenet``; sections ``run``, ``synth`` and ``benchmark``."""


def run_preset(preset: str) -> RunConfig:
    """The :class:`RunConfig` of a preset (its ``run`` section)."""
    return PRESETS.section(preset, "run", RunConfig)


def synth_preset(preset: str, **changes) -> SynthConfig:
    """The :class:`SynthConfig` of a preset (its ``synth`` section), with ``changes`` applied."""
    return replace(PRESETS.section(preset, "synth", SynthConfig), **changes)


def benchmark_preset(preset: str) -> BenchmarkConfig:
    """The :class:`BenchmarkConfig` of a preset (its ``benchmark`` section)."""
    return PRESETS.section(preset, "benchmark", BenchmarkConfig)
