"""The tiny default Llava and loading of any local Hugging Face Llava checkpoint.

The tiny model is a real ``transformers.LlavaForConditionalGeneration``: a CLIP vision
tower (``CLIPVisionConfig``), a 2-layer projector and a Llama decoder (``LlamaConfig``),
with a byte-level BPE tokenizer trained on the dataset's text by ``tokenizers`` and
wrapped as a ``PreTrainedTokenizerFast`` holding an ``<image>`` token. It is saved
with ``save_pretrained`` as a normal folder, so the same loader reads it and a
LLaVA-1.5 / LLaVA-Med conversion.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medcommon.errors import InputError
from medcommon.fs import atomic_dir
from unlearn_bench.config import TinyModelConfig

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts``; adds ``<s>`` in front of every sequence."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="right",
    )


def build_tiny(cfg: TinyModelConfig, texts: Iterable[str]):
    """``(model, processor)``: a freshly initialised tiny Llava and its processor.

    Call :func:`medcommon.train.seed_everything` first: the weights depend on the torch seed.
    """
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    _quiet_transformers()
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    if cfg.image_size % cfg.patch_size:
        raise InputError("model.image_size", "must be a multiple of model.patch_size")
    n_patches = (cfg.image_size // cfg.patch_size) ** 2
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.image_size},
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",  # drop CLS: n_patches image tokens
        num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=2 * cfg.vision_hidden_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=n_patches,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return LlavaForConditionalGeneration(config), processor


def resolve_model_dir(path: str | Path) -> Path:
    """``RUN`` or ``RUN/model`` or a checkpoint folder -> the folder holding ``config.json``."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "model folder not found")
    if (path / "model" / "config.json").is_file() or (
        path / "model" / ADAPTER_CONFIG
    ).is_file():  # a run folder
        path = path / "model"
    return path


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(path: Path) -> Path | None:
    """The base Llava folder of a peft adapter folder (``save_adapter_only``), else None."""
    cfg_file = path / ADAPTER_CONFIG
    if not cfg_file.is_file() or (path / "config.json").is_file():
        return None
    try:
        base = json.loads(cfg_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (json.JSONDecodeError, AttributeError):
        raise InputError(cfg_file, "invalid JSON") from None
    if not base:
        raise InputError(cfg_file, "no base_model_name_or_path: cannot find the base Llava")
    return Path(base)


def checkpoint_dtype(path: str | Path) -> Any:
    """The torch dtype a Llava folder stores its weights in (``config.json``; float32 if unsaid)."""
    import torch

    path = resolve_model_dir(path)
    base = adapter_base(path)
    if base is not None:
        return checkpoint_dtype(base)
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    text = cfg.get("text_config") or {}
    name = (
        cfg.get("dtype") or cfg.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    )
    dtype = getattr(torch, str(name), None) if name else None
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


# Weight files that are pickles (torch.load runs code from them); never read here.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
CONVERT_HINT = (
    "convert them once, where you trust the file: in transformers, "
    "model.save_pretrained(dir, safe_serialization=True) writes model.safetensors"
)


def refuse_pickled_weights(path: Path) -> None:
    """An :class:`InputError` if the folder's weights are pickles only (``pytorch_model.bin``,
    ``*.pt``, ...): checked before anything is loaded. A folder that also holds
    ``*.safetensors`` is read from those (the loaders are told to use them only)."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InputError(
            path / pickles[0],
            "pickled weights are never loaded (unpickling can run code); " + CONVERT_HINT,
        )


def check_llava_dir(path: str | Path) -> Path:
    """Raise :class:`InputError` unless ``path`` looks like a Hugging Face Llava checkpoint
    with safetensors weights (pickled weights are refused before anything is read)."""
    path = resolve_model_dir(path)
    base = adapter_base(path)
    if base is not None:  # a LoRA adapter folder: its base must be a Llava folder
        refuse_pickled_weights(path)
        if not (path / "adapter_model.safetensors").is_file():
            raise InputError(path, "no adapter weights (adapter_model.safetensors)")
        check_llava_dir(base)
        return path
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InputError(path, "not a Hugging Face model folder (no config.json)")
    try:
        model_type = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise InputError(cfg_file, "invalid JSON") from None
    if model_type != "llava":
        raise InputError(
            path, f"not a Llava checkpoint (model_type {model_type!r}, expected 'llava')"
        )
    refuse_pickled_weights(path)
    if not any(path.glob("*.safetensors")):
        raise InputError(path, "no weights (*.safetensors) in the Llava folder")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer.model").is_file():
        raise InputError(
            path, "no tokenizer (tokenizer.json or tokenizer.model) beside the weights"
        )
    return path


def rank0_only_loading() -> bool:
    """Whether this process runs under ``accelerate launch`` with FSDP and
    ``fsdp_cpu_ram_efficient_loading: true`` (the shipped ``configs/accelerate/fsdp.yaml``).

    Then only rank 0 reads the checkpoint's weights; the other ranks build the model with
    its parameters on the meta device (no memory) until accelerate's FSDP2 preparation
    shards it and broadcasts rank 0's values (``fsdp2_load_full_state_dict``).
    transformers 5 no longer skips the read on those ranks itself: ``from_pretrained``
    there still copies every weight into each process.
    """
    on = ("true", "1")
    return (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in on
        and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() in on
    )


def load_llava(path: str | Path, device: str = "cpu", dtype: Any = None):
    """``(model, processor)`` from a local Llava folder (tiny or a LLaVA-1.5 / LLaVA-Med conversion).

    ``dtype`` defaults to float32 whatever the folder stores; a LoRA adapter folder is
    merged onto its base. Under :func:`rank0_only_loading` only rank 0 holds the weights
    (issue #24: a 7B model is not read into every rank's CPU memory).
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    _quiet_transformers()
    path = check_llava_dir(path)
    base = adapter_base(path)
    empty = False
    if rank0_only_loading():
        import torch.distributed as dist
        from accelerate import PartialState

        PartialState()  # starts the process group accelerate launch set up
        empty = dist.get_rank() != 0
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        # Always an explicit dtype: transformers would otherwise keep the stored one
        # (float16 for llava-hf), which is not a dtype to train in.
        kwargs = {
            "local_files_only": True,
            "dtype": dtype if dtype is not None else "float32",
            "use_safetensors": True,  # never a pickle (check_llava_dir refused pickle-only)
        }
        if empty:  # a rank > 0: parameters on meta, buffers real (accelerate fills the rest)
            from accelerate import init_empty_weights
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(base or path, local_files_only=True)
            with init_empty_weights(include_buffers=False):
                model = LlavaForConditionalGeneration._from_config(config, dtype=kwargs["dtype"])
            return model, processor
        model = LlavaForConditionalGeneration.from_pretrained(base or path, **kwargs)
        if base is not None:
            from peft import PeftModel

            # peft reads adapter_model.safetensors when it is there (check_llava_dir)
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            path, f"cannot load the Llava checkpoint ({str(exc).splitlines()[0]})"
        ) from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise InputError(
            path, "the processor is not a Llava processor (needs image processor + tokenizer)"
        )
    return model.to(device), processor


def save_llava(
    model,
    processor,
    directory: str | Path,
    state_dict: Any = None,
    source: str | Path | None = None,
    compute_dtype: Any = None,
) -> Path:
    """``save_pretrained`` of the model and its processor into one folder, atomically.

    ``state_dict`` replaces the model's own (a gathered FSDP state dict). With
    ``source`` (the checkpoint folder the run loaded, in ``compute_dtype``), every
    tensor training did not change is written back with the checkpoint's own bytes
    (:func:`restore_untouched`), so frozen weights stay bit-identical whatever the
    pair of checkpoint and compute dtypes.
    """
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        processor.save_pretrained(tmp)
        if source is not None and compute_dtype is not None:
            restore_untouched(tmp, source, compute_dtype)
    return directory


def _tensor_files(folder: Path) -> dict[str, Path]:
    """``{tensor name: safetensors file}`` of a Hugging Face folder, sharded or not."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    from safetensors import safe_open

    out: dict[str, Path] = {}
    for file in sorted(folder.glob("*.safetensors")):
        if file.name.startswith("adapter_"):
            continue
        with safe_open(str(file), framework="pt") as f:
            out.update(dict.fromkeys(f.keys(), file))
    return out


def restore_untouched(saved: str | Path, source: str | Path, compute_dtype: Any) -> list[str]:
    """Write back, bit for bit, the tensors of ``saved`` that training left alone.

    A run loads the checkpoint ``source`` in ``compute_dtype`` and saves in the
    checkpoint's dtype, so a frozen tensor comes back as ``w.to(compute).to(saved)``:
    for a float16 checkpoint run in bfloat16 that rounding changes it (up to ~2e-3).
    A saved tensor equal to that round trip of its source tensor was not changed by
    training (at the save precision), and is replaced by the source tensor itself,
    its dtype included; a tensor training changed differs from it and is kept.
    Returns the names restored. Rewrites only the shards that hold one.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    saved, source = Path(saved), Path(source)
    origin = _tensor_files(source)
    restored: list[str] = []
    by_file: dict[Path, list[str]] = {}
    for name, file in _tensor_files(saved).items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        tensors = load_file(str(file))
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata()
        hits = []
        for name in names:
            if name not in origin:
                continue
            with safe_open(str(origin[name]), framework="pt") as f:
                orig = f.get_tensor(name)
            out = tensors[name]
            if orig.shape != out.shape or (orig.dtype == out.dtype and torch.equal(orig, out)):
                continue
            if torch.equal(orig.to(compute_dtype).to(out.dtype), out):
                tensors[name] = orig
                hits.append(name)
        if hits:
            save_file(tensors, str(file), metadata=metadata)
            restored += hits
    return sorted(restored)


def save_adapter(model, processor, base: str | Path, directory: str | Path) -> Path:
    """A peft model's adapter (plus the processor) into ``directory``, atomically.

    ``base`` is written as ``base_model_name_or_path`` (absolute), which
    :func:`load_llava` reads to merge the adapter onto it.
    """
    directory = Path(directory)
    for cfg in model.peft_config.values():
        cfg.base_model_name_or_path = str(Path(base).resolve())
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return directory
