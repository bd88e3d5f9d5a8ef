"""BatchNorm over the global batch of a multi-process run, on any backend (gloo on CPU too).

:class:`~medcommon.train.Trainer` gives every process an equal piece of each global
batch and DDP averages the gradients, which is exact for a mean loss over independent
samples. BatchNorm is not of that kind: with DDP each process normalises with the
statistics of its own piece. :class:`GlobalBatchNorm` sums the statistics over the
processes (autograd-aware), so the forward, the gradients and the running statistics
are those of the global batch. ``torch.nn.SyncBatchNorm`` does the same but refuses
CPU tensors, which rules out gloo on CPU.

The Trainer swaps a model's BatchNorm layers for :class:`GlobalBatchNorm` while it
trains with more than one process (:func:`use_global_batchnorm`) and swaps them back
afterwards (:func:`restore_batchnorm`); the layers keep their parameters and buffers,
so ``state_dict`` keys and values are the ones plain BatchNorm would have.

Every function here is the identity (and nothing is communicated) in one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def world_size() -> int:
    """Number of processes of an initialised ``torch.distributed`` group, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum(tensor: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Sum of ``tensor`` over the processes (a new tensor; ``tensor`` itself in one process).

    With ``grad=True`` the sum is differentiable: its backward sums the incoming
    gradients over the processes, which — after DDP divides by the world size — is the
    gradient of the global-batch loss.
    """
    if world_size() == 1:
        return tensor
    if grad:
        return _AllReduceSum.apply(tensor)
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class _AllReduceSum(torch.autograd.Function):
    """``y = sum_r x_r`` on every process; backward: ``dx_r = sum_r' dy_r'`` (the adjoint).

    (``torch.distributed.nn.functional.all_reduce`` does the same but is deprecated.)
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all processes.

    Input ``(B, C, *)``. In training mode under a process group of more than one process,
    mean and (biased) variance per channel are ``sum / count`` with sums and counts
    all-reduced (two passes: mean, then the centred squares, as accurate as one process).
    Running statistics get the unbiased variance, as :class:`torch.nn.BatchNorm2d` does.
    Otherwise (eval mode, one process) it is exactly the BatchNorm it replaced.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = all_reduce_sum(
            torch.tensor(float(input.numel() // input.shape[1]), device=input.device)
        )
        mean = all_reduce_sum(input.sum(dims), grad=True) / count
        centred = input - mean.view(shape)
        var = all_reduce_sum(centred.square().sum(dims), grad=True) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def _retyped(layer: nn.Module, cls: type) -> nn.Module:
    """``layer`` as an instance of ``cls``, sharing its parameters, buffers and flags."""
    new = cls.__new__(cls)
    new.__dict__ = layer.__dict__.copy()
    return new


def has_batchnorm(module: nn.Module) -> bool:
    """True if ``module`` holds a BatchNorm layer (other than SyncBatchNorm)."""
    return any(
        isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm) for m in module.modules()
    )


def use_global_batchnorm(module: nn.Module) -> nn.Module:
    """Turn every BatchNorm layer of ``module`` into a :class:`GlobalBatchNorm` (in place).

    The layers keep their parameters and buffers (so ``state_dict`` keys and values are
    unchanged); :func:`restore_batchnorm` gives them their original class back.
    SyncBatchNorm layers are left alone (they already synchronise, on CUDA).
    """
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(
            child, (GlobalBatchNorm, nn.SyncBatchNorm)
        ):
            new = _retyped(child, GlobalBatchNorm)
            new.__dict__["_original_class"] = type(child)
            module.add_module(name, new)
        else:
            use_global_batchnorm(child)
    return module


def restore_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`use_global_batchnorm` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, GlobalBatchNorm) and "_original_class" in child.__dict__:
            new = _retyped(child, child.__dict__["_original_class"])
            del new.__dict__["_original_class"]
            module.add_module(name, new)
        else:
            restore_batchnorm(child)
    return module


__all__ = [
    "GlobalBatchNorm",
    "all_reduce_sum",
    "has_batchnorm",
    "restore_batchnorm",
    "use_global_batchnorm",
    "world_size",
]
