"""Training a real checkpoint: precision, LoRA, gradient checkpointing, FSDP, memory.

The settings are one group, :class:`~unlearn_bench.config.ScaleConfig` (``scale.*`` of
the finetune and unlearn configs; ``--dtype --lora --adapter-only --grad-accum
--grad-checkpointing`` set them).

- **Precision** (``scale.dtype``): the trainable parameters are always float32 (master
  weights: an Adam update of 2e-5 on a weight of 0.02 is below half a float16/bfloat16
  ulp, so low-precision weights silently stop moving, and float16 overflows). ``bfloat16``
  and ``float16`` run the forward under autocast and keep the *frozen* weights (the
  LoRA base, the reference model) in that dtype. ``auto`` is ``bfloat16`` on a GPU that
  supports it and ``float32`` otherwise. The saved model gets the checkpoint's own dtype
  back (llava-hf ships float16), so a run's output has the layout of its input.
- **LoRA** (``peft``), MLLMU-Bench's recipe: r=16, alpha=16, dropout 0.05, Gaussian
  init, on the layers ``scale.lora_targets`` names (:func:`lora_targets`): ``mllmu`` (the
  default) as MLLMU-Bench's ``find_all_linear_names``, whose bare names peft matches by
  suffix, so the vision tower's q/k/v projections get adapters too; ``language`` the
  language model's linear layers only. The projector, ``lm_head`` and the embeddings
  stay frozen either way. The run's ``model/`` is the merged Llava, or with
  ``scale.save_adapter_only`` a peft adapter folder that :func:`unlearn_bench.model.load_llava`
  merges onto its base when read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medcommon.errors import Diverged, InputError
from unlearn_bench.config import ScaleConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")
# The language model's linear layers (Llama attention + MLP), as a regex peft matches in full.
LANGUAGE_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# Where find_all_linear_names does not look. MLLMU-Bench skips names holding
# "multi_modal_projector" or "vision_model", which in the transformers it ran on (<4.52)
# covered the whole CLIP tower ("vision_tower.vision_model..."); newer versions name the
# tower's layers "vision_tower.encoder...", so "vision_tower" is skipped too, to collect the
# same names: the language model's.
MLLMU_SKIPPED = ("multi_modal_projector", "vision_model", "vision_tower")


def lora_targets(model: torch.nn.Module, which: str) -> str | list[str]:
    """peft ``target_modules`` for ``scale.lora_targets``.

    ``mllmu`` rebuilds MLLMU-Bench's ``find_all_linear_names`` (baselines/*.py): the last
    name component of every ``nn.Linear`` outside the projector and the vision tower,
    minus ``lm_head``. peft matches bare names by suffix over the whole model, so the
    CLIP tower's ``q_proj``/``k_proj``/``v_proj`` are adapted too (its ``out_proj`` and
    ``fc1``/``fc2`` are not, having names the language model does not use). With
    LLaVA-1.5's ``vision_feature_layer = -2`` the last CLIP layer feeds nothing, so its
    adapters get no gradient and merge to no change, as in MLLMU-Bench.
    """
    if which == "language":
        return LANGUAGE_TARGETS
    if which != "mllmu":
        raise InputError("scale.lora_targets", f"unknown {which!r}; use mllmu or language")
    names = {
        name.split(".")[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(k in name for k in MLLMU_SKIPPED)
    }
    names.discard("lm_head")
    return sorted(names)


def resolve_dtype(name: str, device: str, field: str = "scale.dtype") -> str:
    """``auto`` -> ``bfloat16`` on a CUDA device with bf16 support, else ``float32``.

    ``field`` names the setting in an error (``dtype`` for evaluation)."""
    if name not in DTYPES:
        raise InputError(field, f"unknown dtype {name!r}; use {', '.join(DTYPES)}")
    if name == "float16" and not str(device).startswith("cuda"):
        raise InputError(field, "float16 autocast needs CUDA; use bfloat16 or float32 on the CPU")
    if name != "auto":
        return name
    if str(device).startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def mixed_precision(dtype: str) -> str:
    """Accelerate's ``mixed_precision`` for a resolved dtype (autocast around each step)."""
    return {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[dtype]


def torch_dtype(dtype: str) -> torch.dtype:
    return getattr(torch, dtype)


def apply_lora(model: torch.nn.Module, scale: ScaleConfig):
    """The Llava wrapped by peft with LoRA adapters (``scale.lora_*``, module docstring)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise InputError("scale.lora", "LoRA needs peft (pip install peft)") from None
    if scale.lora_r < 1:
        raise InputError("scale.lora_r", f"must be >= 1, got {scale.lora_r}")
    cfg = LoraConfig(
        r=scale.lora_r,
        lora_alpha=scale.lora_alpha,
        lora_dropout=scale.lora_dropout,
        target_modules=lora_targets(model, scale.lora_targets),
        init_lora_weights="gaussian" if scale.lora_init == "gaussian" else True,
        bias="none",
    )
    return get_peft_model(model, cfg)


def check_scale(scale: ScaleConfig, base: Path | None) -> None:
    """The group's fields agree with each other and with ``base`` (the ``--model`` folder or None)."""
    if scale.grad_accum_steps < 1:
        raise InputError("scale.grad_accum_steps", f"must be >= 1, got {scale.grad_accum_steps}")
    if scale.save_adapter_only and not scale.lora:
        raise InputError("scale.save_adapter_only", "needs lora=true (there is no adapter to save)")
    if scale.save_adapter_only and base is None:
        raise InputError(
            "scale.save_adapter_only", "needs --model: an adapter is saved against a base"
        )


def prepare_trainable(model: torch.nn.Module, scale: ScaleConfig, dtype: str) -> torch.nn.Module:
    """Frozen weights in ``dtype``, trainable ones in float32; LoRA and checkpointing applied.

    Returns the module to train (a ``PeftModel`` with ``scale.lora``).
    """
    model.to(torch_dtype(dtype))  # frozen parts stay here; trainable ones are upcast below
    if scale.lora:
        model = apply_lora(model, scale)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # fp32 master weights
    if scale.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (frozen embeddings).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def finish_trainable(model: torch.nn.Module, scale: ScaleConfig, save_dtype: torch.dtype):
    """The model to save: LoRA merged (unless adapter-only), in the checkpoint's dtype."""
    if scale.lora and not scale.save_adapter_only:
        model = model.merge_and_unload()
    if scale.gradient_checkpointing and hasattr(model, "gradient_checkpointing_disable"):
        model.gradient_checkpointing_disable()
    model.to(save_dtype)
    model.config.use_cache = True
    return model


def check_finite(model: torch.nn.Module, step: int) -> None:
    """Raise :class:`medcommon.errors.Diverged` if a trainable weight is NaN or infinite
    after ``step`` (a loss can stay finite while a weight no longer is)."""
    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p.detach()).all():
            raise Diverged(f"weight {name} is not finite after step {step}")


# --------------------------------------------------------------------------- FSDP
FSDP_CONFIG = "configs/accelerate/fsdp.yaml"  # in the package's folder (beside src/)


def fsdp_layer_names(config_file: str | Path) -> list[str]:
    """The class names an accelerate FSDP config auto-wraps (``TRANSFORMER_BASED_WRAP``)."""
    import yaml

    cfg = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
    fsdp = cfg.get("fsdp_config") or {}
    if cfg.get("distributed_type") != "FSDP" or not fsdp:
        raise InputError(config_file, "not an accelerate FSDP config (distributed_type: FSDP)")
    if fsdp.get("fsdp_auto_wrap_policy") != "TRANSFORMER_BASED_WRAP":
        raise InputError(config_file, "expected fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP")
    return [n.strip() for n in str(fsdp.get("fsdp_transformer_layer_cls_to_wrap", "")).split(",")]


def fsdp_units(model: torch.nn.Module, names: list[str]) -> list[tuple[str, torch.nn.Module]]:
    """``(qualified name, module)`` of every submodule whose class is in ``names``.

    The same rule as accelerate's transformer auto-wrap policy: match by class name.
    """
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ in names]


def shard(model: torch.nn.Module, names: list[str]) -> list[str]:
    """FSDP2 full sharding: each wrap unit, then the root (what accelerate does under FSDP).

    Needs an initialised process group (gloo on CPU, nccl on GPU). Returns the class
    names of the wrapped units, in order.
    """
    from torch.distributed.fsdp import fully_shard

    units = fsdp_units(model, names)
    wrapped = [type(m).__name__ for _, m in units]  # fully_shard renames the class
    for _, module in units:
        fully_shard(module, reshard_after_forward=True)
    fully_shard(model, reshard_after_forward=True)
    return wrapped


# ------------------------------------------------------------------ memory table
def llava15_7b(meta: bool = True):
    """LLaVA-1.5-7B (llava-hf's config: Vicuna-7B + CLIP ViT-L/14-336), on the meta device."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
            num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
        ),
        text_config=LlamaConfig(
            vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
        ),
        image_token_index=32000, pad_token_id=32001, vision_feature_layer=-2,
        tie_word_embeddings=False,
    )  # fmt: skip
    with torch.device("meta" if meta else "cpu"):
        return LlavaForConditionalGeneration(cfg)


def memory_rows(n_params: int, n_lora: int, gpus: int = 1) -> list[dict[str, Any]]:
    """Training-state memory in GB (1e9 bytes), activations excluded.

    Full fine-tuning: fp32 master weights 4P + fp32 grads 4P + AdamW m, v 8P = 16P,
    divided by ``gpus`` under FSDP full shard. LoRA: frozen base in bf16 2P + adapters
    16T (T trainable). The reference model (NPO, KL-min, RMU): a frozen bf16 copy, 2P,
    on every GPU (not sharded).
    """
    gb = 1e9
    rows = []
    for setting, weights, trainable in (
        ("full", 4 * n_params / gpus, n_params / gpus),
        ("LoRA r=16", 2 * n_params + 4 * n_lora, n_lora),
    ):
        grads, adam = 4 * trainable, 8 * trainable
        for ref in (0, 2 * n_params):
            rows.append({
                "setting": setting, "reference": bool(ref), "weights": weights / gb,
                "grads": grads / gb, "adam": adam / gb, "ref": ref / gb,
                "total": (weights + grads + adam + ref) / gb,
            })  # fmt: skip
    return rows
