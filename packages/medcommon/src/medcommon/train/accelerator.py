"""Building the Accelerate ``Accelerator`` from our ``--device`` and precision settings."""

from __future__ import annotations

import torch

from medcommon.errors import InputError


def resolve_device(device: str) -> str:
    """Check ``auto|cpu|cuda`` (or ``cuda:N``) against this machine; return the device to use."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device", f"{device} requested but CUDA is not available here")
        return device
    raise InputError("--device", f"unknown device {device!r}; use auto, cpu or cuda")


def make_accelerator(
    device: str = "auto", mixed_precision: str = "no", find_unused_parameters: bool = False
):
    """An ``Accelerator`` for this process (DDP is picked up from ``torchrun``/``accelerate launch``)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    resolved = resolve_device(device)
    if mixed_precision == "fp16" and resolved == "cpu":
        raise InputError("mixed_precision", "fp16 needs CUDA; use bf16 or no on the CPU")
    # Accelerate keeps one global state per process; a second trainer in the same
    # process (benchmarks, multi-stage methods) may ask for other settings.
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state()
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)]
    return Accelerator(
        cpu=resolved == "cpu", mixed_precision=mixed_precision, kwargs_handlers=kwargs
    )
