"""What makes a run split over processes (torchrun, DDP) train like one process.

:class:`medcommon.train.Trainer` gives every process an equal piece of each global
batch and DDP averages the gradients, which is exact for a mean loss over independent
samples. Three things in PBBL's methods are not of that kind:

- BatchNorm normalises with the statistics of the batch it sees: with DDP that is the
  process's piece, not the global batch. The Trainer itself swaps BatchNorm for
  :class:`medcommon.train.distributed.GlobalBatchNorm` while it trains with more than
  one process (statistics summed over the processes, also on CPU/gloo).
- LfF's per-sample loss EMAs: :func:`all_gather_cat` gives every process the whole
  batch's losses and indices (:class:`pbbl_cxr.losses.LossEMA`).
- Group DRO's group losses: :func:`all_reduce_sum` sums group sums and counts over the
  processes (:class:`pbbl_cxr.losses.GroupDROWeights`).

Every function here is the identity (and nothing is communicated) in one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from medcommon.train.distributed import all_reduce_sum, world_size


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a process group."""
    return world_size() == 1 or dist.get_rank() == 0


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """The processes' ``tensor`` (detached) concatenated along dim 0 in rank order.

    Rank order is the order of the global batch (the Trainer gives rank ``r`` the
    ``r``-th piece). Pieces may differ in length (the padding is dropped).
    """
    if world_size() == 1:
        return tensor
    n = world_size()
    length = torch.tensor([tensor.shape[0]], device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(n)]
    dist.all_gather(lengths, length)
    longest = int(max(int(x) for x in lengths))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor.detach()
    pieces = [torch.zeros_like(padded) for _ in range(n)]
    dist.all_gather(pieces, padded)
    return torch.cat([p[: int(k)] for p, k in zip(pieces, lengths)])


__all__ = ["all_gather_cat", "all_reduce_sum", "is_main_process", "world_size"]
