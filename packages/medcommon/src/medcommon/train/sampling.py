"""Stateless batch order: the batch of any step is a function of (seed, step).

Resuming therefore needs only the step number, and a run split over W processes
sees exactly the global batches of a single-process run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medcommon.errors import InputError


class EpochBatchSampler:
    """Global batches of ``batch_size`` indices drawn per epoch from a seeded permutation.

    Args:
        n: dataset length.
        batch_size: the global batch of one optimizer step.
        seed: seeds each epoch's permutation as ``seed * 1_000_003 + epoch``.
        weights: optional per-sample weights; epochs then draw ``n`` indices with
            replacement in proportion to them (class-balanced sampling).
        drop_last: drop the incomplete last batch of an epoch (otherwise it is kept).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        drop_last: bool = True,
    ) -> None:
        if n <= 0:
            raise InputError("dataset", "is empty")
        if batch_size <= 0:
            raise InputError("batch_size", f"must be positive, got {batch_size}")
        if drop_last and batch_size > n:
            raise InputError("batch_size", f"{batch_size} exceeds the {n} training samples")
        self.n, self.batch_size, self.seed, self.drop_last = n, batch_size, seed, drop_last
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if self.weights is not None and (self.weights.numel() != n or (self.weights < 0).any()):
            raise InputError("weights", "need one non-negative weight per sample")

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def epoch_order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=gen)
        return torch.randperm(self.n, generator=gen)

    def global_batch(self, step: int) -> list[int]:
        """Indices of the global batch used at optimizer step ``step`` (0-based)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        return order[pos * self.batch_size : (pos + 1) * self.batch_size].tolist()

    def micro_batches(self, step: int, accum: int, rank: int, world: int) -> list[list[int]]:
        """This process's share of each of the ``accum`` micro-batches of ``step``."""
        batch = self.global_batch(step)
        per_micro = -(-len(batch) // accum)
        out = []
        for a in range(accum):
            micro = batch[a * per_micro : (a + 1) * per_micro]
            per_rank = -(-len(micro) // world)
            out.append(micro[rank * per_rank : (rank + 1) * per_rank])
        return out
