"""Peak memory of one ``full``-preset training step on the CPU (batch 1, the preset's shape).

Run from the repository root as ``python packages/brats_grading/benchmarks/memory/probe.py
--method cmg [--precision bf16] [--checkpointing] [--threads N]``, each variant in a fresh process,
so the process-wide peak is this step's (until issue #19 this was the module
``brats_grading.memprobe`` and ``benchmark --memory-probe``). PyTorch allocates
tensors outside Python's allocator, so ``tracemalloc`` cannot see them; we use the
kernel's resident-set high-water mark instead:
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the step, minus the resident set
(``psutil``) just before it (model, optimizer and input already built). For ``cmg``
the step is the stage-2 guided step (frozen primary forward + three secondary
branches forward and backward + AdamW update), the heaviest step of the method.

Alongside the RSS, ``saved_mb`` counts the bytes autograd keeps for the backward
pass (``torch.autograd.graph.saved_tensors_hooks``, each storage once, the
fp32 weights left out): the activations, which scale with the batch (under bf16,
plus the bf16 weight copies); with checkpointing, what the checkpoints keep
between forward and backward.

Prints one JSON line: ``{"method", "precision", "checkpointing", "shape", "params",
"trainable", "rss_before_mb", "peak_rss_mb", "step_peak_mb", "saved_mb",
"step_seconds", "threads"}``. :func:`gpu_estimate` turns such lines into the
README's table of expected GPU memory. The process first pins its CPU threads to
``--threads`` (default :data:`THREADS`, the README table's one thread) with
:func:`medcommon.train.fix_threads`, whatever ``OMP_NUM_THREADS`` says; ``threads``
records it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import time

import psutil
import torch

from brats_grading.train import method_config
from medcommon.train import fix_threads

THREADS = 1
"""CPU threads of the probe (``--threads``): the README's table was measured on one."""


def measure(
    method: str = "cmg",
    size: int | None = None,
    precision: str = "no",
    checkpointing: bool = False,
) -> dict:
    """One training step of ``method`` at the ``full`` preset on a batch of one.

    ``size``: a cube side instead of the preset's shape (for quick trials);
    ``precision``: ``no`` or ``bf16`` (CPU autocast, as Accelerate applies it);
    ``checkpointing``: ``model.checkpoint_activations``.
    """
    from brats_grading.model import GradingNet

    overrides = ["batch_size=1", f"model.checkpoint_activations={str(checkpointing).lower()}"]
    if size:
        overrides.append(f"shape={size},{size},{size}")
    m, cfg = method_config(method, "full", overrides=overrides)
    torch.manual_seed(0)
    model = GradingNet(cfg.model).train()
    weight = torch.tensor([1.0, 1.0])
    stage = m.stages(cfg, model, weight)[-1]  # the heaviest (last) stage
    for p in model.parameters():
        p.requires_grad_(False)
    for p in stage.params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(stage.params, lr=cfg.lr)
    batch = {"x": torch.randn(1, 4, *cfg.shape), "y": torch.tensor([1])}
    saved: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in weights:  # the weights are saved too, but exist anyway
            saved[st.data_ptr()] = st.nbytes()
        return t

    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    proc = psutil.Process()
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = stage.step_fn(model, batch, None)
    out["loss"].backward()
    opt.step()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "method": method,
        "stage": stage.name or "train",
        "precision": precision,
        "checkpointing": checkpointing,
        "shape": [1, 4, *cfg.shape],
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in stage.params),
        "rss_before_mb": round(before / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "step_peak_mb": round((peak - before) / 2**20, 1),
        "saved_mb": round(sum(saved.values()) / 2**20, 1),
        "step_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }


def gpu_estimate(probe: dict, batch: int = 4) -> dict:
    """Expected GPU memory (MiB) of one training step at ``batch`` from a batch-1 probe.

    Fixed part, independent of the batch: fp32 weights of every branch (4 B per
    parameter) plus, for the trainable ones, fp32 gradients (4 B) and AdamW's two
    moments (8 B); under bf16 autocast, a bf16 copy of the weights (2 B) on top.
    Per-sample part: the measured step peak minus the gradients and AdamW state
    created during the step (12 B per trainable parameter) = activations and
    temporaries of one sample, times ``batch``. cuDNN/cuBLAS workspaces and the
    CUDA context (about 0.5-1 GB) are not included.
    """
    mib = 2**20
    params, trainable = probe["params"], probe["trainable"]
    fixed = 4 * params + 12 * trainable
    if probe["precision"] == "bf16":
        fixed += 2 * params
    per_sample = max(probe["step_peak_mb"] * mib - 12 * trainable, 0)
    return {
        "fixed_mb": round(fixed / mib),
        "per_sample_mb": round(per_sample / mib),
        f"batch{batch}_mb": round((fixed + batch * per_sample) / mib),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="cmg")
    parser.add_argument("--size", type=int, default=None, help="cube side (default: preset)")
    parser.add_argument("--precision", choices=("no", "bf16"), default="no")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=THREADS, help=f"CPU threads, pinned (default {THREADS})"
    )
    args = parser.parse_args()
    fix_threads(args.threads)
    probe = measure(args.method, args.size, args.precision, args.checkpointing)
    print(json.dumps({**probe, "gpu_estimate": gpu_estimate(probe)}))


if __name__ == "__main__":
    main()
