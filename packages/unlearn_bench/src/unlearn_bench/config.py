"""Dataclass configs with the paper's defaults; the presets are data files.

The defaults of every class are the paper-scale values (MLLMU-Bench: LLaVA-1.5-7B,
fine-tune lr 2e-5 for 5 epochs at batch 4; unlearn 1 epoch at lr 2e-5; generation
up to 50 new tokens). The presets (``configs/<name>.yaml``, read by
:class:`medcommon.presets.Presets`) change them per section: ``synth``, ``finetune``,
``eval``, ``unlearn`` (every method), ``methods.<name>`` (one method) and ``benchmark``.
``tiny``, ``demo`` and ``small`` scale them down for a CPU: a 0.18 M-parameter (small:
0.50 M) Llava, 32x32 images, more epochs and a larger learning rate so that the tiny
model memorises its training set in seconds to a minute; ``full`` is the paper's values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from medcommon.config import config_from_dict, merge_mappings, resolve_config
from medcommon.errors import InputError
from medcommon.presets import Presets

PRESETS = Presets("unlearn_bench")
SCENARIOS = ("privacy", "incorrectness")
T = TypeVar("T")


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`unlearn_bench.synth.generate` writes."""

    n_entities: int = 500  # patients (privacy) or conditions (incorrectness) seen in training
    n_general: int = 50  # held-out entities, never trained on (utility + MIA holdout)
    forget_ratio: float = 0.10  # fraction of the training entities to forget
    images_per_entity: int = 2  # image 0 is trained on, image 1 goes to the test split
    image_size: int = 224
    # Issue #23: the training questions (forget_train, retain_train) never offer a value
    # that only held-out (general) entities hold as a distractor, so the membership
    # holdout's values never reach training. False keeps the datasets of the committed
    # results (their retain_train offers general patients' values; see synth.generate)
    holdout_clean: bool = False
    # Issue #23, knowledge that probes can see (Allen-Zhu & Li 2024, "Physics of Language
    # Models 3.1": facts trained under varied phrasings become extractable). 2 adds a
    # second training wording of every training question, 3 and 4 a third and fourth (each
    # setting writes the smaller one's files and adds the new wording's items); 1 writes
    # the datasets of the committed results byte for byte.
    train_wordings: int = 1
    # Issue #23: also write forget_val / retain_val (probes of the same facts in a fourth
    # wording, to pick an unlearning dose without the test probes) and general_train (the
    # held-out entities' questions in the training wording: the verbatim membership
    # holdout, as MUSE compares training texts against unseen texts of the same template).
    validation_probes: bool = False


@dataclass(frozen=True)
class TinyModelConfig:
    """A Llava from a small CLIP vision tower and a small Llama (the default model)."""

    vocab_size: int = 500
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    vision_hidden_size: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    image_size: int = 32
    patch_size: int = 8
    max_positions: int = 256


@dataclass(frozen=True)
class ScaleConfig:
    """Training a real checkpoint at scale (:mod:`unlearn_bench.scale`): precision, LoRA,
    memory savers. The ``scale`` group of both :class:`FinetuneConfig` and
    :class:`~unlearn_bench.methods.UnlearnConfig` (``--set scale.lora=true``)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # bf16 autocast on GPU
    lora: bool = False  # MLLMU-Bench's recipe: r=16, alpha=16, dropout 0.05, targets below
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    # "mllmu": MLLMU-Bench's find_all_linear_names, bare layer names that peft matches by
    # suffix anywhere (the LM's q/k/v/o/gate/up/down and the vision tower's q/k/v);
    # "language": the language model's linear layers only (before issue #24).
    lora_targets: Literal["mllmu", "language"] = "mllmu"
    # "gaussian": MLLMU-Bench's init_lora_weights (A ~ N(0, 1/r), B = 0); "kaiming": peft's
    # default (A Kaiming-uniform, B = 0). Both start as the unchanged model.
    lora_init: Literal["gaussian", "kaiming"] = "gaussian"
    save_adapter_only: bool = False  # RUN/model = the peft adapter, not the merged Llava
    grad_accum_steps: int = 1  # micro-batches per optimizer step (batch_size is the global batch)
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class FinetuneConfig:
    """Vanilla fine-tuning on forget + retain (and retraining on retain only)."""

    model: TinyModelConfig = TinyModelConfig()
    lr: float = 2e-5
    epochs: float = 5.0
    batch_size: int = 4
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "linear"] = "linear"  # linear decay to 0 (HF Trainer default)
    max_grad_norm: float | None = 1.0
    log_every: int = 10
    checkpoint_every: int = 500  # steps between checkpoints for --resume (0: only at the end)
    # "answer": the NLL counts the answer tokens (and EOS); "full": every non-padding token of
    # prompt and answer, as MLLMU-Bench's finetune.py (labels = input_ids, padding -100).
    loss_tokens: Literal["answer", "full"] = "answer"
    scale: ScaleConfig = ScaleConfig()


@dataclass(frozen=True)
class EvalConfig:
    """Generation and membership-inference settings."""

    max_new_tokens: int = 50
    batch_size: int = 16
    mink_fraction: float = 0.4  # Min-K% Prob: mean of the lowest 40% token log-probs (MUSE)
    max_items: int = 0  # per subset; 0 = all (a deterministic subsample otherwise)
    # The model's dtype during evaluation (issue #24): "auto" = bfloat16 on a GPU that has
    # it (a 7B model in float32 would need 28 GB), float32 on the CPU.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # How multiple choice is asked (issue #24): "zero_shot" = the question with its options
    # in this package's prompt; "mllmu_few_shot" = MLLMU-Bench's eval.py: one profile's MCQ
    # as demonstrations before each question, and its letter instruction
    # (:func:`unlearn_bench.evaluate.mllmu_mcq_items`).
    mcq_prompt: Literal["zero_shot", "mllmu_few_shot"] = "zero_shot"


@dataclass(frozen=True)
class BenchmarkConfig:
    """What the ``benchmark`` command runs by default (``--scenarios``/``--methods`` win)."""

    scenarios: tuple[str, ...] = SCENARIOS
    methods: tuple[str, ...] = ()  # () = every method, in the paper's order (methods.PAPER_ORDER)


@dataclass(frozen=True)
class MatchedConfig:
    """What the ``matched`` command runs by default under a preset (its ``matched`` section;
    ``--seeds``/``--methods`` win). A setting of issue #23's benchmark added after the
    first two names its reported seeds and methods here, in its own preset file, so that
    fixing them before its run leaves the earlier settings' protocol files untouched."""

    seeds: tuple[int, ...] | None = None  # None: unlearn_bench.matched.PRESET_SEEDS' entry
    methods: tuple[str, ...] | None = None  # None: matched.METHODS_RUN; (): vanilla, retrain


def check_training(cfg: FinetuneConfig | object) -> None:
    """The fields a finetune or unlearn config shares: a positive learning rate, a positive
    length and batch, non-negative cadences (an :class:`InputError` names the field)."""
    if not cfg.lr > 0:
        raise InputError("lr", f"must be > 0, got {cfg.lr}")
    if not cfg.epochs > 0:
        raise InputError("epochs", f"must be > 0, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise InputError("batch_size", f"must be >= 1, got {cfg.batch_size}")
    if cfg.max_grad_norm is not None and not cfg.max_grad_norm > 0:
        raise InputError("max_grad_norm", f"must be > 0 or null, got {cfg.max_grad_norm}")
    for name in ("weight_decay", "log_every", "checkpoint_every"):
        value = getattr(cfg, name, 0)
        if value < 0:
            raise InputError(name, f"must be >= 0, got {value}")


def choose_preset(preset: str | None, real_model: bool) -> str:
    """The preset a command runs with: the one asked for, else ``full`` for a real model.

    Without ``--preset``, a real checkpoint (``--model PATH``, or a run descended from
    one) gets the paper-scale settings, not ``tiny``'s lr 1e-3 and 24 eval questions.
    """
    if preset is not None:
        return preset
    return "full" if real_model else "tiny"


def synth_preset(preset: str) -> SynthConfig:
    """Dataset size of a preset (its ``synth`` section)."""
    return PRESETS.section(preset, "synth", SynthConfig)


def finetune_preset(preset: str) -> FinetuneConfig:
    """Fine-tuning config of a preset (its ``finetune`` section; ``full`` = the paper's values)."""
    return PRESETS.section(preset, "finetune", FinetuneConfig)


def eval_preset(preset: str) -> EvalConfig:
    """Evaluation config of a preset (its ``eval`` section)."""
    return PRESETS.section(preset, "eval", EvalConfig)


def benchmark_preset(preset: str) -> BenchmarkConfig:
    """The benchmark's default scenarios and methods under a preset (its ``benchmark`` section)."""
    return PRESETS.section(preset, "benchmark", BenchmarkConfig)


def matched_preset(preset: str) -> MatchedConfig:
    """The ``matched`` command's default seeds and methods under a preset (its ``matched``
    section); a negative or repeated seed is an :class:`InputError` naming the file."""
    cfg = PRESETS.section(preset, "matched", MatchedConfig)
    seeds = cfg.seeds or ()
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise InputError(
            PRESETS.folder / f"{preset}.yaml",
            f"matched.seeds: need distinct seeds >= 0, got {list(seeds)}",
        )
    return cfg


def unlearn_preset(preset: str, cls: type[T], method: str | None, known: Collection[str]) -> T:
    """An unlearning method's config: the ``unlearn`` section (every method), then the
    ``methods.<method>`` changes on top, as ``cls``. A ``methods`` entry naming none of
    the ``known`` methods is an :class:`InputError` (a misspelt name is never ignored)."""
    where = PRESETS.folder / f"{preset}.yaml"
    per_method = PRESETS.section(preset, "methods")
    for name, changes in per_method.items():
        if name not in known:
            raise InputError(
                where, f"methods.{name}: unknown method; choose from {', '.join(known)}"
            )
        if not isinstance(changes, dict):
            raise InputError(where, f"methods.{name}: expected a mapping")
    data = merge_mappings(PRESETS.section(preset, "unlearn"), per_method.get(method) or {})
    return config_from_dict(cls, data, prefix=f"{where}: ")


def resolve_synth(
    preset: str,
    forget_ratio: float | None = None,
    file: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> SynthConfig:
    """The ``generate`` config: preset <- ``--forget-ratio`` <- ``--config`` <- ``--set``."""
    base = synth_preset(preset)
    if forget_ratio is not None:
        base = dataclasses.replace(base, forget_ratio=forget_ratio)
    return resolve_config(SynthConfig, base=base, file=file, overrides=overrides)


def resolve_eval(
    preset: str, file: str | Path | None = None, overrides: Iterable[str] = ()
) -> EvalConfig:
    """The ``evaluate`` config: preset <- ``--config`` <- ``--set``."""
    return resolve_config(EvalConfig, base=eval_preset(preset), file=file, overrides=overrides)


def forget_count(ratio: float, n_entities: int) -> int:
    """Forget entities for a ratio: ``ratio * n_entities`` rounded half up.

    E.g. 0.10 of 500 -> 50, 0.25 of 10 -> 3 (2.5 rounds up), 0.14 of 10 -> 1. The 1e-9
    absorbs float error (0.145 * 100 = 14.499999999999998 must give 15, like 14.5).
    """
    return math.floor(ratio * n_entities + 0.5 + 1e-9)


def check_forget_ratio(ratio: float, n_entities: int) -> None:
    """The forget ratio must be in (0, 1) and leave at least one entity on each side."""
    if not 0.0 < ratio < 1.0:
        raise InputError("--forget-ratio", f"must be in (0, 1), got {ratio}")
    n_forget = forget_count(ratio, n_entities)
    if n_forget < 1 or n_forget >= n_entities:
        raise InputError(
            "--forget-ratio",
            f"{ratio} of {n_entities} entities gives {n_forget} to forget; need 1..{n_entities - 1}",
        )
