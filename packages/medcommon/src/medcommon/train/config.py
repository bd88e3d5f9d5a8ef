"""The loop's own settings; a method's config embeds one of these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train; nothing here is method-specific.

    ``batch_size`` is the global batch per optimizer step: it is split over
    ``grad_accum_steps`` micro-batches and over the processes of a DDP run, so a
    run's result does not depend on how many processes share it.
    """

    max_steps: int = 1000
    batch_size: int = 32
    grad_accum_steps: int = 1
    max_grad_norm: float | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    drop_last: bool = True
    find_unused_parameters: bool = False
    # With more than one process, BatchNorm layers normalise with the global batch's
    # statistics while training (medcommon.train.distributed.GlobalBatchNorm), so N
    # processes train like one; False keeps plain per-process BatchNorm (DDP's default).
    global_batchnorm: bool = True
    # Divergence (medcommon.errors.Diverged, exit 2): a non-finite loss, or a loss whose
    # magnitude exceeds max_loss_growth x max(|first loss|, 1); None: non-finite only.
    max_loss_growth: float | None = 1e4
    # the config field a divergence's advice tells the user to lower (e.g. "smd.lr")
    lr_field: str = "lr"
    # False: no checkpoint/ is written (e.g. under FSDP, where the module's own
    # state_dict holds this process's shards only); --resume then starts from step 0.
    save_checkpoints: bool = True
