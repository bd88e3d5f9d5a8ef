"""The pipeline on ``medcommon.train.Trainer``: finetune (vanilla), retrain (gold), unlearn.

- ``finetune``: the vanilla model, trained on forget + retain (the paper fine-tunes
  on all data, so the model memorises what it must later forget).
- ``retrain``: the same, from the same initialisation and seed, on retain only: the
  gold standard an unlearning method tries to match without its cost.
- ``unlearn``: a method from :data:`unlearn_bench.methods.METHODS` applied to a
  vanilla model, on the forget set (and retain, for methods that regularise on it).

Each writes ``RUN/config.json``, ``RUN/log.jsonl``, ``RUN/checkpoint/``,
``RUN/model/`` (a Hugging Face Llava folder with its processor) and ``RUN/metrics.json``.
``config.json`` is :mod:`medcommon.run`'s schema: ``run.command`` is the pipeline step,
``run.method`` the unlearning method (``finetune`` / ``retrain`` for those two), and
``run.extra`` holds ``init`` (finetune, retrain: ``tiny`` or the Llava folder started
from) or ``vanilla_model`` (unlearn: the folder the method started from).
"""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path
from typing import Any

import torch

from medcommon.errors import InputError
from medcommon.run import RunInfo, load_run, make_run_info, write_metrics, write_run_config
from medcommon.train import TrainConfig, Trainer, seed_everything
from medcommon.train.accelerator import resolve_device
from unlearn_bench import PACKAGE, __version__
from unlearn_bench.config import FinetuneConfig
from unlearn_bench.data import (
    EncodedSet,
    Encoder,
    PairedSet,
    check_dataset,
    collate,
    corpus_texts,
    paired_collate,
)
from unlearn_bench.losses import nll
from unlearn_bench.methods import METHODS, Forwards, forward
from unlearn_bench.model import build_tiny, check_llava_dir, load_llava, save_llava

# Under DDP some parameters get no gradient on some processes: the vision tower on a
# process whose share of the batch is text-only, CLIP's post_layernorm always (LLaVA
# reads the encoder's last hidden state), the layers above RMU's steered layer.
# find_unused_parameters lets DDP reduce zeros for them instead of failing.
_DDP_UNUSED = True


def _steps(epochs: float, n: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * n / batch_size))


def _finetune_step(model, batch, ctx):
    return {"loss": nll(forward(model, batch).logits, batch["labels"], ddp=True)}


def _check_resumable(out: Path, command: str, method: str, seed: int) -> None:
    """``--resume`` continues the same run: same command, method and seed (read with load_run)."""
    if not (out / "config.json").is_file():
        return  # nothing written yet: --resume starts from step 0
    saved = load_run(out, package=PACKAGE).info
    # runs of the earlier layout have no method for finetune / retrain: it is the command
    if (saved.command, saved.method or saved.command, saved.seed) != (command, method, seed):
        raise InputError(
            out,
            f"cannot resume a {saved.command} run of method {saved.method} with seed "
            f"{saved.seed} as {command} {method} with seed {seed}",
        )


def _start(trainer: Trainer, out: Path, info: RunInfo, cfg: Any) -> None:
    """Write ``RUN/config.json`` (main process only under DDP) before the first step."""
    if trainer.accelerator.is_main_process:
        write_run_config(out, info, cfg)
    trainer.accelerator.wait_for_everyone()


def _finish(
    trainer: Trainer, model: Any, processor: Any, out: Path, metrics: dict[str, Any]
) -> None:
    """Write ``RUN/model`` (the trained Llava) and ``RUN/metrics.json`` (main process only under DDP)."""
    # medcommon-candidate: a Trainer hook (e.g. ``save_fn(model, dir)``) so the loop can write
    # a Hugging Face folder itself; model_config=None + this function is the workaround.
    if trainer.accelerator.is_main_process:
        save_llava(model, processor, out / "model")
        write_metrics(out, metrics)
    trainer.accelerator.wait_for_everyone()


def finetune(
    data_dir: str | Path,
    out: str | Path,
    cfg: FinetuneConfig,
    *,
    seed: int = 0,
    model_path: str | Path | None = None,
    retain_only: bool = False,
    device: str = "auto",
    quiet: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the vanilla model (or, with ``retain_only``, the retrained gold model)."""
    data_dir, out = Path(data_dir), Path(out)
    command = "retrain" if retain_only else "finetune"
    data = check_dataset(data_dir)
    model_dir = check_llava_dir(model_path) if model_path is not None else None
    device = resolve_device(device)
    if resume:
        _check_resumable(out, command, command, seed)
    seed_everything(seed)
    if model_dir is not None:
        model, processor = load_llava(model_dir)
    else:  # the tokenizer sees every split, so finetune and retrain share one initialisation
        model, processor = build_tiny(cfg.model, corpus_texts(data))
    enc = Encoder(processor, data_dir)
    items = data["retain"] if retain_only else data["forget"] + data["retain"]
    encoded = [enc.encode(it) for it in items]
    batch_size = min(cfg.batch_size, len(encoded))
    steps = _steps(cfg.epochs, len(encoded), batch_size)
    info = make_run_info(
        PACKAGE,
        __version__,
        command,
        method=command,
        seed=seed,
        data=data_dir,
        init=str(model_dir.resolve()) if model_dir else "tiny",
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
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
            max_grad_norm=cfg.max_grad_norm,
            log_every=cfg.log_every,
            find_unused_parameters=_DDP_UNUSED,
            checkpoint_every=cfg.checkpoint_every,
        ),
        run_dir=out,
        seed=seed,
        scheduler=scheduler,
        collate_fn=partial(collate, pad_id=processor.tokenizer.pad_token_id),
        device=device,
        quiet=quiet,
    )
    _start(trainer, out, info, cfg)
    result = trainer.fit(resume=resume)
    metrics = {
        "command": command,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "n_train": len(encoded),
    }
    _finish(trainer, model, processor, out, metrics)
    return metrics


def unlearn(
    model_path: str | Path,
    data_dir: str | Path,
    out: str | Path,
    method_name: str,
    cfg: Any,
    *,
    seed: int = 0,
    device: str = "auto",
    quiet: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Apply an unlearning method to the vanilla model at ``model_path``."""
    data_dir, out = Path(data_dir), Path(out)
    cls = METHODS.get(method_name)
    data = check_dataset(data_dir, ("forget", "retain"))
    model_dir = check_llava_dir(model_path)
    device = resolve_device(device)
    if resume:
        _check_resumable(out, "unlearn", method_name, seed)
    seed_everything(seed)
    model, processor = load_llava(model_dir)
    ref = None
    if cls.needs_reference:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    method = cls(cfg, ref=ref, seed=seed)
    method.setup(model)
    enc = Encoder(processor, data_dir)
    forget = [enc.encode(it, method.forget_answer(it)) for it in data["forget"]]
    pad = processor.tokenizer.pad_token_id
    if cls.uses_retain:
        dataset = PairedSet(forget, [enc.encode(it) for it in data["retain"]], seed)
        collate_fn = partial(paired_collate, pad_id=pad)
    else:
        dataset, collate_fn = EncodedSet(forget), partial(collate, pad_id=pad)
    batch_size = min(cfg.batch_size, len(forget))
    steps = _steps(cfg.epochs, len(forget), batch_size)
    info = make_run_info(
        PACKAGE,
        __version__,
        "unlearn",
        method=method_name,
        seed=seed,
        data=data_dir,
        vanilla_model=str(model_dir.resolve()),
    )
    trainer = Trainer(
        Forwards(model),  # forget and retain in one call per step: what DDP accepts
        torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0),
        dataset,
        method.loss,
        config=TrainConfig(
            max_steps=steps,
            batch_size=batch_size,
            max_grad_norm=cfg.max_grad_norm,
            log_every=cfg.log_every,
            find_unused_parameters=_DDP_UNUSED,
        ),
        run_dir=out,
        seed=seed,
        collate_fn=collate_fn,
        stage=None,
        device=device,
        quiet=quiet,
    )
    if ref is not None:
        # Never inside DDP: every process holds the same frozen copy (loaded from the same
        # folder, before any step) on its own device and runs it on its share of the batch.
        method.ref = ref.to(trainer.accelerator.device)
    _start(trainer, out, info, cfg)
    result = trainer.fit(resume=resume)
    metrics = {
        "command": "unlearn",
        "method": method_name,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "n_forget": len(forget),
    }
    _finish(trainer, model, processor, out, metrics)
    return metrics
