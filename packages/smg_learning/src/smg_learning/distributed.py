"""Gradient averaging across the processes of a ``torchrun`` run (a no-op in one process).

DDP averages gradients only inside ``backward`` of a forward pass through the wrapped
model; gradients taken with ``torch.autograd.grad`` (PGA's virtual steps) are never
synchronised, so PGA averages them itself with :func:`mean_over_processes`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    """Processes in this run: 1 unless ``torch.distributed`` is initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (the model itself otherwise)."""
    return getattr(model, "module", model)


def mean_over_processes(
    tensors: Sequence[torch.Tensor], differentiable: bool = False
) -> list[torch.Tensor]:
    """Each tensor averaged over all processes (returned unchanged in a single process).

    ``differentiable`` uses the autograd-aware collective, whose backward sums the
    incoming gradients over processes, so second-order PGA (``order="exact"``)
    differentiates through the average; otherwise one flat all-reduce of detached copies.
    """
    world = world_size()
    if world == 1:
        return list(tensors)
    if differentiable:
        from torch.distributed.nn.functional import all_reduce

        return [all_reduce(t) / world for t in tensors]
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    dist.all_reduce(flat)  # SUM: gloo has no AVG
    flat /= world
    out, k = [], 0
    for t in tensors:
        out.append(flat[k : k + t.numel()].view_as(t))
        k += t.numel()
    return out


def synced_loss(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """A loss of the same value whose gradient is ``loss``'s gradient averaged over processes.

    ``Σ <p, G> - Σ <p.detach(), G>`` is zero in value and has gradient ``G``, the
    averaged gradient; with one process ``loss`` is returned as is.
    """
    if world_size() == 1:
        return loss
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
    mean = mean_over_processes(grads)
    lin = sum((p * g).sum() - (p.detach() * g).sum() for p, g in zip(params, mean))
    return loss.detach() + lin
