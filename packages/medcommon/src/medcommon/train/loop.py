"""The training loop: a step function plugged into Accelerate, with resume.

Typical use::

    trainer = Trainer(model, optimizer, train_set, step_fn, config=TrainConfig(...),
                      run_dir=out, seed=0, eval_fn=evaluate, model_config=model.config)
    result = trainer.fit(resume=args.resume)

A step consumes one global batch (``config.batch_size`` samples, split over
gradient-accumulation micro-batches and processes), then takes one optimizer
step. The batch of step ``s`` depends only on ``(seed, s)``, and the RNG states
are checkpointed, so a resumed run continues exactly where the original stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from medcommon.errors import Diverged, InputError
from medcommon.fs import write_text_atomic
from medcommon.models import save_pretrained
from medcommon.train.accelerator import make_accelerator
from medcommon.train.checkpoint import load_checkpoint, read_trainer_state, save_checkpoint
from medcommon.train.config import TrainConfig
from medcommon.train.distributed import has_batchnorm, restore_batchnorm, use_global_batchnorm
from medcommon.train.sampling import EpochBatchSampler
from medcommon.train.seeding import rng_state, set_rng_state

StepFn = Callable[[torch.nn.Module, Any, "StepContext"], "torch.Tensor | dict[str, Any]"]
EvalFn = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class StepContext:
    """What a step function may need besides the model and batch."""

    step: int
    epoch: int
    micro_step: int
    accelerator: Any
    state: dict[str, Any]
    config: TrainConfig

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


@dataclass
class FitResult:
    """Outcome of :meth:`Trainer.fit`."""

    steps: int
    train_seconds: float  # optimizer steps only: evaluation and checkpoint writing excluded
    final_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    eval_seconds: float = 0.0


class Trainer:
    """Runs ``step_fn`` for ``config.max_steps`` optimizer steps.

    Args:
        model: the module to train (all trainable parts of a method, e.g. a biased
            and a debiased network wrapped in one module).
        optimizer: over ``model``'s parameters.
        train_set: a map-style dataset; items are collated with ``collate_fn``.
        step_fn: ``(model, batch, ctx) -> loss`` or ``{"loss": loss, **values_to_log}``;
            the batch is already on the device. The returned loss is for one
            micro-batch, as a mean over its samples.
        config: loop settings.
        run_dir: where ``log.jsonl``, ``checkpoint/`` and ``model/`` go; None keeps
            everything in memory (no checkpoints, no files).
        seed: seeds the batch order (model init is the caller's, before building it).
        eval_fn: ``model -> metrics``; called every ``config.eval_every`` steps and at
            the end, on the main process, with the unwrapped model in eval mode.
        model_config: written with the weights to ``run_dir/<model_dir>/``; if None no
            model folder is written.
        scheduler: an LR scheduler stepped once per optimizer step.
        state: named objects with ``state_dict``/``load_state_dict`` that a method
            mutates in its step (e.g. loss EMAs); checkpointed with the model.
        sample_weights: per-sample sampling weights (class-balanced sampling).
        stage: a name for multi-stage pipelines; its checkpoint lives in
            ``run_dir/checkpoint/<stage>/`` and its log lines carry ``"stage"``.
        device: ``auto``, ``cpu`` or ``cuda``.
        quiet: no progress bar.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        train_set: Dataset,
        step_fn: StepFn,
        *,
        config: TrainConfig,
        run_dir: str | Path | None = None,
        seed: int = 0,
        eval_fn: EvalFn | None = None,
        model_config: Any | None = None,
        model_dir: str = "model",
        scheduler: Any | None = None,
        state: dict[str, Any] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        sample_weights: Sequence[float] | None = None,
        stage: str | None = None,
        device: str = "auto",
        quiet: bool = False,
    ) -> None:
        if config.max_steps < 0:
            raise InputError("max_steps", "must be >= 0")
        if config.grad_accum_steps < 1:
            raise InputError("grad_accum_steps", "must be >= 1")
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = seed
        self.eval_fn = eval_fn
        self.model_config = model_config
        self.model_dir = model_dir
        self.step_fn = step_fn
        self.train_set = train_set
        self.collate_fn = collate_fn or default_collate
        self.state = state or {}
        self.stage = stage
        self.quiet = quiet
        self.accelerator = make_accelerator(
            device, config.mixed_precision, find_unused_parameters=config.find_unused_parameters
        )
        world = self.accelerator.num_processes
        if config.batch_size % (config.grad_accum_steps * world):
            raise InputError(
                "batch_size",
                f"{config.batch_size} is not divisible by grad_accum_steps x processes "
                f"({config.grad_accum_steps} x {world})",
            )
        self.sampler = EpochBatchSampler(
            len(train_set),
            config.batch_size,
            seed=seed,
            weights=sample_weights,
            drop_last=config.drop_last,
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        self._unwrapped = model
        self._loss_start: float | None = None  # |first loss|: the divergence bound's scale

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_dir(self) -> Path | None:
        if self.run_dir is None:
            return None
        base = self.run_dir / "checkpoint"
        return base / self.stage if self.stage else base

    @property
    def log_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "log.jsonl"

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ---------------------------------------------------------------- logging
    def _log(self, record: dict[str, Any]) -> None:
        if self.log_path is None or not self.is_main:
            return
        if self.stage:
            record = {"stage": self.stage, **record}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Drop this stage's log lines written after the checkpoint we resume from."""
        if self.log_path is None or not self.is_main or not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("stage") == self.stage and rec.get("step", 0) > step:
                continue
            kept.append(line)
        write_text_atomic(self.log_path, "".join(x + "\n" for x in kept))

    # ------------------------------------------------------------- evaluation
    def _evaluate(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        metrics: dict[str, float] = {}
        if self.is_main:
            was_training = self._unwrapped.training
            self._unwrapped.eval()
            # Evaluation must not move the training RNG stream.
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                metrics = {k: float(v) for k, v in self.eval_fn(self._unwrapped).items()}
            self._unwrapped.train(was_training)
        self.accelerator.wait_for_everyone()
        return metrics

    def _save_model(self) -> None:
        if self.run_dir is None or self.model_config is None or not self.is_main:
            return
        save_pretrained(self._unwrapped, self.run_dir / self.model_dir, self.model_config)

    # ------------------------------------------------------------- checkpoint
    def _checkpoint(self, step: int, final: dict[str, float] | None = None) -> None:
        """Save the full training state (``final``: the end-of-training evaluation)."""
        if self.checkpoint_dir is None or not self.config.save_checkpoints:
            return
        from accelerate.utils import gather_object

        states = gather_object([rng_state()])
        if self.is_main:
            save_checkpoint(
                self.checkpoint_dir,
                model=self._unwrapped,
                optimizer=self.optimizer.optimizer
                if hasattr(self.optimizer, "optimizer")
                else self.optimizer,
                scheduler=self.scheduler,
                extra=self.state,
                rng_states=states,
                trainer_state={
                    "step": step,
                    "max_steps": self.config.max_steps,
                    "seed": self.seed,
                    "num_processes": self.accelerator.num_processes,
                    "loss_start": self._loss_start,
                    "final": final or {},
                },
            )
        self.accelerator.wait_for_everyone()

    def _resume(self) -> tuple[int, dict[str, float]]:
        ckpt = self.checkpoint_dir
        info = read_trainer_state(ckpt) if ckpt is not None else None
        if info is None:  # killed before its first checkpoint: it starts again from step 0
            self._truncate_log(0)
            return 0, {}
        if info.get("seed") != self.seed:
            raise InputError(
                ckpt, f"checkpoint was made with seed {info.get('seed')}, not {self.seed}"
            )
        if info.get("num_processes") != self.accelerator.num_processes:
            raise InputError(ckpt, "checkpoint was made with a different number of processes")
        rngs = load_checkpoint(
            ckpt,
            model=self._unwrapped,
            optimizer=self.optimizer.optimizer
            if hasattr(self.optimizer, "optimizer")
            else self.optimizer,
            scheduler=self.scheduler,
            extra=self.state,
        )
        set_rng_state(rngs[self.accelerator.process_index])
        self._loss_start = info.get("loss_start")
        self._truncate_log(int(info["step"]))
        return int(info["step"]), dict(info.get("final") or {})

    # ------------------------------------------------------------------- fit
    def fit(self, resume: bool = False) -> FitResult:
        """Train to ``config.max_steps``; with ``resume``, continue from the last checkpoint.

        With more than one process (and ``config.global_batchnorm``), the model's BatchNorm
        layers use the global batch's statistics while it trains, and are plain BatchNorm
        again when ``fit`` returns (same ``state_dict`` keys; :mod:`.distributed`).
        """
        global_bn = (
            self.config.global_batchnorm
            and self.accelerator.num_processes > 1
            and has_batchnorm(self._unwrapped)
        )
        if global_bn:
            use_global_batchnorm(self._unwrapped)
        try:
            return self._fit(resume)
        finally:
            if global_bn:
                restore_batchnorm(self._unwrapped)

    def _fit(self, resume: bool) -> FitResult:
        cfg = self.config
        start, final = self._resume() if resume else (0, {})
        resumed_from = start if resume and start > 0 else None
        if self.run_dir is not None and self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        self.model.train()
        t0 = time.perf_counter()
        eval_seconds = other_seconds = 0.0
        window: dict[str, list[float]] = {}
        last_metrics: dict[str, float] = {}
        bar = tqdm(
            total=cfg.max_steps,
            initial=start,
            desc=self.stage or "train",
            disable=self.quiet or not self.is_main,
            dynamic_ncols=True,
            leave=False,
        )
        for step in range(start, cfg.max_steps):  # one optimizer step per iteration
            epoch = step // self.sampler.steps_per_epoch
            micro = self.sampler.micro_batches(step, cfg.grad_accum_steps, rank, world)
            if hasattr(self.train_set, "set_epoch"):  # e.g. per-epoch draws (PyTorch convention)
                self.train_set.set_epoch(epoch)
            for m, indices in enumerate(micro):
                batch = self.collate_fn([self.train_set[i] for i in indices])
                batch = _to_device(batch, self.accelerator.device)
                ctx = StepContext(step, epoch, m, self.accelerator, self.state, cfg)
                last_micro = m == len(micro) - 1
                sync = (
                    contextlib.nullcontext() if last_micro else self.accelerator.no_sync(self.model)
                )
                with sync, self.accelerator.autocast():
                    out = self.step_fn(self.model, batch, ctx)
                    loss, logs = (
                        (out["loss"], out) if isinstance(out, dict) else (out, {"loss": out})
                    )
                    self._check_divergence(loss, step)
                    self.accelerator.backward(loss / cfg.grad_accum_steps)
                for k, v in logs.items():
                    window.setdefault(k, []).append(
                        float(v.detach()) if torch.is_tensor(v) else float(v)
                    )
            if cfg.max_grad_norm is not None:
                self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            done = step + 1
            bar.update(1)

            if cfg.log_every and (done % cfg.log_every == 0 or done == cfg.max_steps):
                record = {"step": done, "epoch": epoch}
                record.update({k: sum(v) / len(v) for k, v in window.items()})
                record["lr"] = self.optimizer.param_groups[0]["lr"]
                record["elapsed"] = round(time.perf_counter() - t0, 3)
                self._log(record)
                bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}")
                window.clear()
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.max_steps:
                t_eval = time.perf_counter()
                self._log_eval(done, self._evaluate())
                eval_seconds += time.perf_counter() - t_eval
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
                t_ckpt = time.perf_counter()
                self._checkpoint(done)
                other_seconds += time.perf_counter() - t_ckpt
        bar.close()
        train_seconds = time.perf_counter() - t0 - eval_seconds - other_seconds

        if resume and start >= cfg.max_steps:
            # The run had finished before: its outputs are on disk already.
            if self.run_dir is not None and not (self.run_dir / self.model_dir).exists():
                self._save_model()
            return FitResult(cfg.max_steps, 0.0, final, start)
        t_eval = time.perf_counter()
        last_metrics = self._evaluate() if self.eval_fn is not None else {}
        self._log_eval(cfg.max_steps, last_metrics)
        eval_seconds += time.perf_counter() - t_eval
        self._save_model()
        self._checkpoint(cfg.max_steps, last_metrics)
        return FitResult(
            steps=cfg.max_steps,
            train_seconds=train_seconds,
            final_metrics=last_metrics,
            resumed_from=resumed_from,
            eval_seconds=eval_seconds,
        )

    def _check_divergence(self, loss: torch.Tensor, step: int) -> None:
        """Raise :class:`Diverged` on every process when any process's loss is not finite or
        has grown past ``config.max_loss_growth`` times its start (so no rank waits forever)."""
        value = float(loss.detach().float().sum())
        if self._loss_start is None and math.isfinite(value):
            self._loss_start = abs(value)
        growth = self.config.max_loss_growth
        bound = None if growth is None else growth * max(self._loss_start or 0.0, 1.0)
        bad = not math.isfinite(value) or (bound is not None and abs(value) > bound)
        mine = bad
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([float(bad)], device=self.accelerator.device)
            bad = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        if bad:
            where = f" in stage {self.stage}" if self.stage else ""
            if not mine:
                what = f"another process's loss left its bound at step {step + 1}{where}"
            elif math.isfinite(value):
                what = (
                    f"loss is {value:.4g} at step {step + 1}{where}, more than {growth:g} x "
                    f"its start ({self._loss_start:.4g})"
                )
            else:
                what = f"loss is {value} at step {step + 1}{where}"
            raise Diverged(what, lr_field=self.config.lr_field)

    def _log_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Log an evaluation; keeping the best weights is the method's (a ``state`` object)."""
        if metrics and self.is_main:
            self._log({"step": step, "eval": metrics})

    def unwrapped_model(self) -> torch.nn.Module:
        """The trained module without DDP or other wrappers."""
        return self._unwrapped


def _to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
