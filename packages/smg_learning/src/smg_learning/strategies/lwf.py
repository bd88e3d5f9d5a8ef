"""``lwf``: learning without forgetting, distilling the previous stage's model (Li & Hoiem 2017)."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smg_learning.strategies.base import STRATEGIES, RunContext, Strategy


@STRATEGIES.register("lwf")
class LwF(Strategy):
    name = "lwf"
    description = "learning without forgetting (distil the previous model)"

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self.teacher: nn.Module | None = None

    def regularise(self, model, x, logits, loss, logs: dict[str, Any]) -> torch.Tensor:
        """Plus ``α T² KL(softmax(teacher/T) || softmax(student/T))`` per pixel."""
        if self.teacher is None:
            return loss
        cfg = self.cfg
        with torch.no_grad():
            soft = F.softmax(self.teacher(x) / cfg.lwf_temperature, dim=1)
        kd = F.kl_div(
            F.log_softmax(logits / cfg.lwf_temperature, dim=1), soft, reduction="batchmean"
        ) / (x.shape[-1] * x.shape[-2])
        logs["kd"] = kd.detach()
        return loss + cfg.lwf_alpha * cfg.lwf_temperature**2 * kd

    def end_stage(self, t: int, model: nn.Module) -> None:
        """The model after stage ``t``, frozen, is the teacher of stage ``t + 1``."""
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
