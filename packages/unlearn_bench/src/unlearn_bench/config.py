"""Dataclass configs with the paper's defaults and the ``tiny`` / ``demo`` / ``small`` / ``full`` presets.

The defaults of every class are the paper-scale values (MLLMU-Bench: LLaVA-1.5-7B,
fine-tune lr 2e-5 for 5 epochs at batch 4; unlearn 1 epoch at lr 2e-5; generation
up to 50 new tokens). ``tiny`` and ``small`` scale them down for a CPU: a
0.18 M-parameter (small: 0.50 M) Llava, 32x32 images, more epochs and a larger learning rate so
that the tiny model memorises its training set in seconds to a minute.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from medcommon.config import PRESETS as PRESETS  # re-exported: the package's presets
from medcommon.config import check_preset as check_preset
from medcommon.config import resolve_config
from medcommon.errors import InputError

Scenario = Literal["privacy", "incorrectness"]
T = TypeVar("T")


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`unlearn_bench.synth.generate` writes."""

    n_entities: int = 500  # patients (privacy) or conditions (incorrectness) seen in training
    n_general: int = 50  # held-out entities, never trained on (utility + MIA holdout)
    forget_ratio: float = 0.10  # fraction of the training entities to forget
    images_per_entity: int = 2  # image 0 is trained on, image 1 goes to the test split
    image_size: int = 224


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
    checkpoint_every: int = 0
    # "answer": the NLL counts the answer tokens (and EOS); "full": every non-padding token of
    # prompt and answer, as MLLMU-Bench's finetune.py (labels = input_ids, padding -100).
    loss_tokens: Literal["answer", "full"] = "answer"
    # Real checkpoints at scale (unlearn_bench.scale): precision, LoRA, memory savers.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # bf16 autocast on GPU
    lora: bool = False  # MLLMU-Bench: r=16, alpha=16, dropout 0.05 on the LM's linear layers
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    save_adapter_only: bool = False  # RUN/model = the peft adapter, not the merged Llava
    grad_accum_steps: int = 1  # micro-batches per optimizer step (batch_size is the global batch)
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class EvalConfig:
    """Generation and membership-inference settings."""

    max_new_tokens: int = 50
    batch_size: int = 16
    mink_fraction: float = 0.4  # Min-K% Prob: mean of the lowest 40% token log-probs (MUSE)
    max_items: int = 0  # per subset; 0 = all (a deterministic subsample otherwise)


def choose_preset(preset: str | None, real_model: bool) -> str:
    """The preset a command runs with: the one asked for, else ``full`` for a real model.

    Without ``--preset``, a real checkpoint (``--model PATH``, or a run descended from
    one) gets the paper-scale settings, not ``tiny``'s lr 1e-3 and 24 eval questions.
    """
    if preset is not None:
        check_preset(preset)
        return preset
    return "full" if real_model else "tiny"


def preset_entry(table: Mapping[str, T], preset: str, what: str) -> T:
    """``table[preset]``: an unknown preset is an :class:`InputError`, never a silent default.

    ``what`` names the table in the message (e.g. ``"fine-tuning"``); a known preset that
    the table lacks is a bug, reported as one.
    """
    check_preset(preset)
    if preset not in table:
        raise KeyError(f"the {what} preset table has no {preset!r} entry")
    return table[preset]


def check_tables(tables: Mapping[str, Mapping[str, object]]) -> None:
    """Every preset table has exactly one entry per preset in :data:`PRESETS` (at import)."""
    for what, table in tables.items():
        if set(table) != set(PRESETS):
            raise AssertionError(
                f"the {what} preset table covers {sorted(table)}, not the presets {list(PRESETS)}"
            )


# tiny: seconds, for tests. demo: the benchmark's central point (vanilla, retrain, NPO,
# GA on the privacy scenario, 3 seeds) in about two minutes on 2 CPU cores: half small's
# entities (forget 10% = 2 of 15), the narrower tiny model, 30 epochs so that it memorises
# (a trial at 20 entities and 15 epochs left vanilla's forget MCQ accuracy at 0.38-0.56).
# small: every method and scenario in about 15 minutes. full: the paper's values.
FINETUNE_PRESETS: dict[str, FinetuneConfig] = {
    "tiny": FinetuneConfig(lr=3e-3, epochs=2.0, batch_size=8, log_every=5),
    "demo": FinetuneConfig(lr=3e-3, epochs=30.0, batch_size=16, log_every=25),
    "small": FinetuneConfig(
        model=TinyModelConfig(hidden_size=128, intermediate_size=256),
        lr=3e-3,
        epochs=25.0,
        batch_size=16,
        log_every=25,
    ),
    "full": FinetuneConfig(),
}
SYNTH_PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(n_entities=10, n_general=2, image_size=32),
    "demo": SynthConfig(n_entities=15, n_general=4, image_size=32),
    "small": SynthConfig(n_entities=30, n_general=4, image_size=32),
    "full": SynthConfig(),
}
EVAL_PRESETS: dict[str, EvalConfig] = {
    "tiny": EvalConfig(max_new_tokens=8, batch_size=32, max_items=24),
    "demo": EvalConfig(max_new_tokens=16, batch_size=64, max_items=120),
    "small": EvalConfig(max_new_tokens=16, batch_size=64, max_items=240),
    "full": EvalConfig(),
}
check_tables({"fine-tuning": FINETUNE_PRESETS, "synth": SYNTH_PRESETS, "evaluation": EVAL_PRESETS})


def finetune_preset(preset: str) -> FinetuneConfig:
    """Fine-tuning config of a preset (``full`` = the paper's values)."""
    return preset_entry(FINETUNE_PRESETS, preset, "fine-tuning")


def synth_preset(preset: str) -> SynthConfig:
    """Dataset size of a preset."""
    return preset_entry(SYNTH_PRESETS, preset, "synth")


def eval_preset(preset: str) -> EvalConfig:
    """Evaluation config of a preset."""
    return preset_entry(EVAL_PRESETS, preset, "evaluation")


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


def resolve_finetune(
    preset: str, file: str | Path | None = None, overrides: Iterable[str] = ()
) -> FinetuneConfig:
    """The ``finetune`` / ``retrain`` config: preset <- ``--config`` <- ``--set``."""
    return resolve_config(
        FinetuneConfig, base=finetune_preset(preset), file=file, overrides=overrides
    )


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


# Old names, kept for one release (the package's own code uses the new ones).
DataConfig = SynthConfig  # old name, kept for one release
preset_data = synth_preset  # old name, kept for one release
preset_finetune = finetune_preset  # old name, kept for one release
preset_eval = eval_preset  # old name, kept for one release
