"""``finetune``: sequential fine-tuning, the lower bound (the base :class:`Strategy` as is)."""

from __future__ import annotations

from smg_learning.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("finetune")
class Finetune(Strategy):
    name = "finetune"
    description = "sequential fine-tuning, no protection against forgetting"
