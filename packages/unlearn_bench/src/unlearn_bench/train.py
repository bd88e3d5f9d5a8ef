"""The pipeline on ``medcommon.train.Trainer``: finetune (vanilla), retrain (gold), unlearn.

- ``finetune``: the vanilla model, trained on forget + retain (the paper fine-tunes
  on all data, so the model memorises what it must later forget).
- ``retrain``: the same, from the same initialisation and seed, on retain only: the
  gold standard an unlearning method tries to match without its cost.
- ``unlearn``: a method from :data:`unlearn_bench.methods.METHODS` applied to a
  vanilla model, on the forget set (and retain, for methods that regularise on it).

Each takes one :class:`medcommon.run.RunSpec` (the CLI's ``App.spec``, or
:func:`run_spec` from Python), opens the run folder with :func:`medcommon.run.open_run`
(a fresh ``--out``, ``--resume`` of the same command, method and seed, or ``--overwrite``
of an existing run), checks every input (nothing is written before), then, inside
``RunFolder.writing`` (:func:`_fit_and_finish`), writes ``RUN/config.json``,
``RUN/log.jsonl``, ``RUN/checkpoint/`` (every ``checkpoint_every`` steps and at the end),
``RUN/model/`` (a Hugging Face Llava folder with its processor) and ``RUN/metrics.json``.
Bad input or a divergence (:class:`medcommon.errors.Diverged`) in there leaves nothing of a
new run and never touches an existing one. In ``config.json``,
``run.command`` is the pipeline step, ``run.method`` the unlearning method
(``finetune`` / ``retrain`` for those two), and ``run.extra`` holds ``init`` (finetune,
retrain: ``tiny`` or the Llava folder started from) or ``vanilla_model`` (unlearn: the
folder the method started from).
"""

from __future__ import annotations

import copy
import math
import os
from functools import partial
from pathlib import Path
from typing import Any

import torch

from medcommon.errors import Diverged, InputError
from medcommon.run import RunFolder, RunSpec, load_run, open_run
from medcommon.train import TrainConfig, Trainer, seed_everything
from medcommon.train.accelerator import resolve_device
from unlearn_bench import PACKAGE, __version__
from unlearn_bench.config import (
    FinetuneConfig,
    ScaleConfig,
    check_training,
    choose_preset,
    finetune_preset,
)
from unlearn_bench.data import (
    EncodedSet,
    Encoder,
    PairedSet,
    check_dataset,
    collate,
    corpus_texts,
    paired_collate,
    present_files,
)
from unlearn_bench.losses import nll, sequence_logprob
from unlearn_bench.methods import METHODS, Forwards, forward
from unlearn_bench.mllmu import dataset_folder
from unlearn_bench.model import (
    build_tiny,
    check_llava_dir,
    checkpoint_dtype,
    load_llava,
    save_adapter,
    save_llava,
)
from unlearn_bench.scale import (
    check_finite,
    check_scale,
    finish_trainable,
    mixed_precision,
    prepare_trainable,
    resolve_dtype,
    torch_dtype,
)
from unlearn_bench.synth import TRAIN_SPLITS

# Under DDP some parameters get no gradient on some processes: the vision tower on a
# process whose share of the batch is text-only, CLIP's post_layernorm always (LLaVA
# reads the encoder's last hidden state), the layers above RMU's steered layer.
# find_unused_parameters lets DDP reduce zeros for them instead of failing.
_DDP_UNUSED = True
# What --resume may change (with --set): how long to train and how often to log / checkpoint.
FINETUNE_RESUMABLE = ("epochs", "log_every", "checkpoint_every")
UNLEARN_RESUMABLE = FINETUNE_RESUMABLE


def is_tiny_lineage(path: str | Path) -> bool:
    """Whether a run (or its model folder) descends from the built-in tiny Llava.

    Follows ``run.extra``: ``init`` of finetune / retrain (``tiny`` or a folder),
    ``vanilla_model`` of unlearn. A bare Llava folder is a real checkpoint.
    """
    path = Path(path)
    run = path.parent if path.name == "model" else path
    for _ in range(16):  # a chain of unlearn runs; a cycle cannot be a real lineage
        if not (run / "config.json").is_file() or not (run / "model").exists():
            return False
        try:
            extra = load_run(run, package=PACKAGE).info.extra
        except InputError:
            return False
        if extra.get("init") is not None:
            return extra["init"] == "tiny"
        if extra.get("vanilla_model") is None:
            return False
        nxt = Path(extra["vanilla_model"])
        run = nxt.parent if nxt.name == "model" else nxt
    return False


def reference_model(model: torch.nn.Module, source: str, dtype: str) -> torch.nn.Module:
    """The frozen reference of a method: a copy of the vanilla ``model``, or a Llava folder.

    ``source`` is ``"vanilla"`` or a folder (``RUN`` or ``RUN/model``), e.g. MLLMU-Bench's
    oracle for NPO, a model fine-tuned on retain only. Its vocabulary must be the vanilla
    model's: the methods compare the two models' log-probabilities of the same tokens.
    """
    if source == "vanilla":
        return copy.deepcopy(model).eval().requires_grad_(False)
    folder = reference_dir(source)
    ref, _ = load_llava(folder, dtype=torch_dtype(dtype))
    got, want = ref.get_input_embeddings().weight.shape, model.get_input_embeddings().weight.shape
    if got != want:
        raise InputError(
            "npo_reference",
            f"{folder}: embeddings {tuple(got)} differ from the model's {tuple(want)}",
        )
    return ref.eval().requires_grad_(False)


@torch.no_grad()
def _attach_logprobs(model, items: list[dict[str, Any]], pad_id: int, batch_size: int,
                     device: Any, autocast: Any) -> None:  # fmt: skip
    """``item["ref_logprob"]`` = log p_model(answer | prompt) of every item: eval mode,
    right-padded batches on ``device`` under the ``autocast()`` context factory."""
    was_training = model.training
    model.eval()
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = {k: v.to(device) if torch.is_tensor(v) else v
                 for k, v in collate(chunk, pad_id).items()}  # fmt: skip
        with autocast():
            lp, _ = sequence_logprob(forward(model, batch).logits, batch["labels"])
        for item, value in zip(chunk, lp.float().tolist(), strict=True):
            item["ref_logprob"] = value
    model.train(was_training)


def attach_reference_logprobs(
    items: list[dict[str, Any]], ref: torch.nn.Module, pad_id: int, batch_size: int,
    device: str, dtype: str,
) -> None:  # fmt: skip
    """Add ``ref_logprob`` = log p_ref(answer | prompt) to every encoded forget item.

    One pass of the frozen reference (eval mode, the run's compute device and autocast
    dtype) over right-padded batches: the quantity NPO's reference contributes, which
    is fixed during training, so the reference need not be held (issue #24). A right-
    padded item's log-probability is the same in any batch in exact arithmetic; in
    floating point it can differ from the per-step value in the last bits.
    """
    target = resolve_device(device)
    if target == "cuda" and "LOCAL_RANK" in os.environ:
        target = f"cuda:{os.environ['LOCAL_RANK']}"  # this process's GPU under torchrun
    ref.to(target)
    low = dtype != "float32"
    _attach_logprobs(ref, items, pad_id, batch_size, target, lambda: torch.autocast(
        target.split(":")[0], dtype=torch_dtype(dtype), enabled=low))  # fmt: skip


def attach_policy_logprobs(
    trainer: Trainer, items: list[dict[str, Any]], pad_id: int, batch_size: int
) -> None:
    """``ref_logprob`` of every forget item from the trainer's model before its first step
    (the vanilla reference, no copy made): eval mode, the trainer's device and autocast.

    Every process runs every item in the same batches, so the collective forward of a
    sharded model stays in step. LoRA starts as the unchanged model (B = 0) and float32
    master weights hold the loaded values exactly, so this is the vanilla model's
    log-probability up to float rounding.
    """
    acc = trainer.accelerator
    _attach_logprobs(trainer.model, items, pad_id, batch_size, acc.device, acc.autocast)


def reference_dir(source: str | Path) -> Path:
    """The Llava folder an ``npo_reference`` names (``RUN`` or ``RUN/model``), checked."""
    path = Path(source)
    return check_llava_dir(path / "model" if (path / "model").is_dir() else path)


def _outside_out(spec: RunSpec, folder: Path | None, flag: str) -> None:
    """With ``--overwrite``, a model read from inside ``--out`` would be replaced by the run
    that records it as its start (``run.extra``): refused."""
    if (
        folder is not None
        and spec.overwrite
        and folder.resolve().is_relative_to(spec.out.resolve())
    ):
        raise InputError(flag, f"{folder} is inside --out, which --overwrite replaces")


def _steps(epochs: float, n: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * n / batch_size))


def _finetune_step(model, batch, ctx):
    return {"loss": nll(forward(model, batch).logits, batch["labels"], ddp=True)}


def _finish(
    trainer: Trainer,
    run: RunFolder,
    model: Any,
    processor: Any,
    metrics: dict[str, Any],
    scale: ScaleConfig,
    save_dtype: torch.dtype,
    base: Path | None,
) -> None:
    """Write ``RUN/model`` and ``RUN/metrics.json`` (main process only under DDP).

    ``RUN/model`` is the trained Llava in the checkpoint's dtype (LoRA merged), or with
    ``scale.save_adapter_only`` the peft adapter of the base folder ``base``.
    """
    # medcommon-candidate: a Trainer hook (e.g. ``save_fn(model, dir)``) so the loop can write
    # a Hugging Face folder itself; model_config=None + this function is the workaround.
    if _is_fsdp(trainer):
        _finish_fsdp(trainer, run, model, processor, metrics, save_dtype, base)
        return
    check_finite(model, metrics["steps"])
    if trainer.accelerator.is_main_process:
        final = finish_trainable(model, scale, save_dtype)
        if scale.lora and scale.save_adapter_only:
            save_adapter(final, processor, base, run.path / "model")
        else:  # frozen tensors written back with the checkpoint's own bytes
            save_llava(final, processor, run.path / "model", source=base,
                       compute_dtype=torch_dtype(metrics["dtype"]))  # fmt: skip
        run.finish(metrics)
    trainer.accelerator.wait_for_everyone()


def _is_fsdp(trainer: Trainer | None = None) -> bool:
    """Whether this process runs under ``accelerate launch`` with an FSDP config."""
    if trainer is None:  # before the Accelerator exists: what accelerate launch exports
        return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1")
    from accelerate.utils import DistributedType

    return trainer.accelerator.distributed_type == DistributedType.FSDP


def _finish_fsdp(trainer, run, model, processor, metrics, save_dtype, base=None) -> None:
    """Under ``accelerate launch`` with FSDP: gather the full state dict, rank 0 writes it.

    Non-finite weights raise :class:`medcommon.errors.Diverged` on every process (rank 0
    alone holds the full state, so it tells the others). Not run here (accelerate builds
    FSDP only on GPUs); the sharded arithmetic itself is tested on CPU by
    ``tests/test_fsdp.py``.
    """
    state = trainer.accelerator.get_state_dict(trainer.model)  # collective; full on rank 0
    bad = None
    if trainer.accelerator.is_main_process:
        state = {k.removeprefix("llava."): v.to(save_dtype) for k, v in state.items()}
        bad = next(
            (n for n, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()),
            None,
        )
    flag = torch.tensor([float(bad is not None)], device=trainer.accelerator.device)
    if trainer.accelerator.reduce(flag, reduction="sum").item() > 0:
        what = f"weight {bad}" if bad is not None else "a weight (on rank 0)"
        raise Diverged(f"{what} is not finite after step {metrics['steps']}")
    if trainer.accelerator.is_main_process:
        model.config.use_cache = True
        save_llava(model, processor, run.path / "model", state_dict=state, source=base,
                   compute_dtype=torch_dtype(metrics["dtype"]))  # fmt: skip
        run.finish(metrics)
    trainer.accelerator.wait_for_everyone()


def _check_fsdp(trainer: Trainer, scale: ScaleConfig, resume: bool) -> None:
    """FSDP runs full-parameter training from scratch (what the 7B table needs it for)."""
    if not _is_fsdp(trainer):
        return
    if scale.lora:
        raise InputError(
            "scale.lora", "LoRA under FSDP is not supported; a 7B LoRA run fits one GPU"
        )
    if resume:
        raise InputError("--resume", "not supported under FSDP (no checkpoint is written)")


def _fit_and_finish(
    trainer: Trainer,
    run: RunFolder,
    model: Any,
    processor: Any,
    metrics: dict[str, Any],
    scale: ScaleConfig,
    save_dtype: torch.dtype,
    base: Path | None,
    **extra: Any,
) -> dict[str, Any]:
    """Write the run: header, training (log, checkpoints), ``RUN/model``, ``RUN/metrics.json``.

    Everything happens inside :meth:`medcommon.run.RunFolder.writing`: a run that fails
    on bad input, a divergence included (:class:`medcommon.errors.Diverged`, raised by
    the Trainer on a non-finite or exploding loss, or here on non-finite final weights),
    leaves nothing of itself and never touches a run that was there before; an
    ``--overwrite`` run is written beside ``--out`` and swapped in once finished.
    ``metrics`` gets ``steps`` and ``train_seconds`` (after ``command``, before the rest).
    """
    with run.writing(**extra):
        trainer.run_dir = run.path  # the staging folder of an --overwrite run
        trainer.accelerator.wait_for_everyone()
        result = trainer.fit(resume=run.resumed)
        head = {k: metrics.pop(k) for k in ("command", "method") if k in metrics}
        metrics = {**head, "steps": result.steps, "train_seconds": result.train_seconds, **metrics}
        _finish(trainer, run, model, processor, metrics, scale, save_dtype, base)
    return metrics


def run_spec(command: str, out: str | Path, data: str | Path, **fields: Any) -> RunSpec:
    """A :class:`RunSpec` for :func:`finetune` / :func:`unlearn` called from Python.

    ``fields`` are the other :class:`RunSpec` fields (``method``, ``seed``, ``preset``,
    ``overrides``, ``device``, ``quiet``, ``resume``, ``options={"model": PATH}``).
    """
    return RunSpec(PACKAGE, __version__, command, Path(out), Path(data), **fields)


def _prepared(spec: RunSpec, real_model: bool) -> RunSpec:
    """``spec`` with its dataset folder (an MLLMU-Bench folder converted) and, for a new
    run without ``--preset``, the preset :func:`~unlearn_bench.config.choose_preset` picks."""
    preset = spec.preset if spec.resume else choose_preset(spec.preset, real_model)
    return spec.replace(data=dataset_folder(spec.data), preset=preset)


def finetune(spec: RunSpec) -> dict[str, Any]:
    """Train the vanilla model (command ``finetune``), or the retrained gold model on
    retain only (command ``retrain``); returns the run's metrics.

    ``spec.options["model"]``: a Llava folder to start from (default: a fresh tiny Llava).
    """
    command = spec.command
    if command not in ("finetune", "retrain"):
        raise ValueError(f"finetune runs the finetune or retrain command, not {command!r}")
    model_path = spec.options.get("model")
    spec = _prepared(spec, real_model=model_path is not None).replace(method=command)
    run = open_run(
        spec,
        FinetuneConfig,
        base=lambda s: finetune_preset(s.preset),
        resumable=FINETUNE_RESUMABLE,
    )
    cfg, data_dir, seed = run.cfg, run.spec.data, run.seed
    check_training(cfg)
    # every question file the folder has: the tiny model's tokenizer is trained on them all
    data = check_dataset(data_dir, present_files(data_dir))
    model_dir = check_llava_dir(model_path) if model_path is not None else None
    _outside_out(spec, model_dir, "--model")
    device = spec.device
    dtype = resolve_dtype(cfg.scale.dtype, device)
    check_scale(cfg.scale, model_dir)
    seed_everything(seed)
    if model_dir is not None:
        model, processor = load_llava(model_dir, dtype=torch_dtype(dtype))
        save_dtype = checkpoint_dtype(model_dir)
    else:  # the tokenizer sees every split, so finetune and retrain share one initialisation
        model, processor = build_tiny(cfg.model, corpus_texts(data))
        save_dtype = torch.float32
    model = prepare_trainable(model, cfg.scale, dtype)
    enc = Encoder(processor, data_dir)
    # the training QA, never the evaluation probes (forget / retain)
    retain_only = command == "retrain"
    items = data["retain_train"] if retain_only else data["forget_train"] + data["retain_train"]
    encoded = [enc.encode(it, loss_tokens=cfg.loss_tokens) for it in items]
    batch_size = min(cfg.batch_size, len(encoded))
    steps = _steps(cfg.epochs, len(encoded), batch_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = None
    if cfg.lr_schedule == "linear":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: max(0.0, 1.0 - s / steps)
        )
    trainer = Trainer(
        model,
        optimizer,
        EncodedSet(encoded),
        _finetune_step,
        config=TrainConfig(
            max_steps=steps,
            batch_size=batch_size,
            grad_accum_steps=cfg.scale.grad_accum_steps,
            max_grad_norm=cfg.max_grad_norm,
            mixed_precision=mixed_precision(dtype),
            log_every=cfg.log_every,
            find_unused_parameters=_DDP_UNUSED,
            checkpoint_every=cfg.checkpoint_every,
            save_checkpoints=not _is_fsdp(),
        ),
        run_dir=None,  # set to run.path inside run.writing(): nothing is written before
        seed=seed,
        scheduler=scheduler,
        collate_fn=partial(collate, pad_id=processor.tokenizer.pad_token_id),
        device=device,
        quiet=spec.quiet,
    )
    _check_fsdp(trainer, cfg.scale, run.resumed)
    metrics = {"command": command, "n_train": len(encoded), "dtype": dtype}
    init = str(model_dir.resolve()) if model_dir else "tiny"
    return _fit_and_finish(
        trainer, run, model, processor, metrics, cfg.scale, save_dtype, model_dir, init=init
    )


def unlearn(spec: RunSpec) -> dict[str, Any]:
    """Apply method ``spec.method`` to the vanilla model ``spec.options["model"]``
    (``RUN`` or ``RUN/model`` of finetune, or any Llava folder); returns the run's metrics."""
    model_path = spec.options.get("model")
    if model_path is None:
        raise InputError("--model", "unlearn needs the vanilla model to start from")
    spec = _prepared(spec, real_model=not is_tiny_lineage(model_path))
    run = open_run(
        spec,
        lambda s: METHODS.get(s.method).config_class,
        base=lambda s: METHODS.get(s.method).preset_config(s.preset),
        resumable=UNLEARN_RESUMABLE,
    )
    cfg, data_dir, seed = run.cfg, run.spec.data, run.seed
    check_training(cfg)
    method_name = run.method
    cls = METHODS.get(method_name)
    data = check_dataset(data_dir, TRAIN_SPLITS)
    model_dir = check_llava_dir(model_path)
    _outside_out(spec, model_dir, "--model")
    npo_reference = getattr(cfg, "npo_reference", "vanilla")
    if cls.needs_reference and npo_reference != "vanilla":  # checked before any loading
        _outside_out(spec, reference_dir(npo_reference), "npo_reference")
    holds = cls.needs_reference and getattr(cfg, "reference_logprobs", "model") == "model"
    if _is_fsdp() and (holds or (cls.needs_reference and npo_reference != "vanilla")):
        # accelerate's cpu_ram_efficient_loading leaves ranks > 0 without weights until
        # sharding broadcasts rank 0's, so a model loaded beside the policy has none there.
        raise InputError(
            "--method",
            f"{method_name} under FSDP would hold a reference model that only rank 0 loads; "
            "use npo with npo_reference=vanilla and reference_logprobs=once, or DDP / one GPU",
        )
    device = spec.device
    dtype = resolve_dtype(cfg.scale.dtype, device)
    check_scale(cfg.scale, model_dir)
    seed_everything(seed)
    model, processor = load_llava(model_dir, dtype=torch_dtype(dtype))
    save_dtype = checkpoint_dtype(model_dir)
    method = cls(cfg, ref=None, seed=seed)
    enc = Encoder(processor, data_dir)
    lt = cfg.loss_tokens
    forget = [enc.encode(it, method.forget_answer(it), lt) for it in data["forget_train"]]
    pad = processor.tokenizer.pad_token_id
    ref = None
    if method.holds_reference():  # frozen, in the compute dtype (bf16 halves its memory)
        ref = reference_model(model, npo_reference, dtype)
    elif cls.needs_reference and npo_reference != "vanilla":  # an oracle: loaded, used, freed
        oracle = reference_model(model, npo_reference, dtype)
        attach_reference_logprobs(forget, oracle, pad, cfg.batch_size, device, dtype)
        del oracle
    model = prepare_trainable(model, cfg.scale, dtype)
    method.setup(model)
    if cls.uses_retain:
        retain = [enc.encode(it, loss_tokens=lt) for it in data["retain_train"]]
        dataset = PairedSet(forget, retain, seed)
        collate_fn = partial(paired_collate, pad_id=pad)
    else:
        dataset, collate_fn = EncodedSet(forget), partial(collate, pad_id=pad)
    batch_size = min(cfg.batch_size, len(forget))
    steps = _steps(cfg.epochs, len(forget), batch_size)
    trainer = Trainer(
        Forwards(model),  # forget and retain in one call per step: what DDP accepts
        torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0
        ),
        dataset,
        method.loss,
        config=TrainConfig(
            max_steps=steps,
            batch_size=batch_size,
            grad_accum_steps=cfg.scale.grad_accum_steps,
            max_grad_norm=cfg.max_grad_norm,
            mixed_precision=mixed_precision(dtype),
            log_every=cfg.log_every,
            find_unused_parameters=_DDP_UNUSED,
            checkpoint_every=cfg.checkpoint_every,
            save_checkpoints=not _is_fsdp(),
        ),
        run_dir=None,  # set to run.path inside run.writing(): nothing is written before
        seed=seed,
        collate_fn=collate_fn,
        stage=None,
        device=device,
        quiet=spec.quiet,
    )
    if ref is not None:
        # Never inside DDP: every process holds the same frozen copy (loaded from the same
        # folder, before any step) on its own device and runs it on its share of the batch.
        method.ref = ref.to(trainer.accelerator.device)
    elif cls.needs_reference and npo_reference == "vanilla":
        # The vanilla reference is the policy before its first step: the prepared (DDP- or
        # FSDP-wrapped) model itself, run once over the forget set on every process.
        attach_policy_logprobs(trainer, forget, pad, batch_size)
    metrics_reference = "model held" if ref is not None else (
        "log-probabilities computed once" if cls.needs_reference else "none")  # fmt: skip
    _check_fsdp(trainer, cfg.scale, run.resumed)
    metrics = {"command": "unlearn", "method": method_name, "n_forget": len(forget), "dtype": dtype,
               "reference": metrics_reference}  # fmt: skip
    vanilla = str(model_dir.resolve())
    return _fit_and_finish(
        trainer, run, model, processor, metrics, cfg.scale, save_dtype, model_dir,
        vanilla_model=vanilla,
    )  # fmt: skip
