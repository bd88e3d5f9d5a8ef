"""Peak memory of one ``full``-preset training step on the CPU (batch 1, 4 x 128^3).

Run as ``python -m brats_grading.memprobe --method cmg`` (a fresh process, so the
process-wide peak is this step's). PyTorch allocates tensors outside Python's
allocator, so ``tracemalloc`` cannot see them; we use the kernel's resident-set
high-water mark instead: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the step,
minus the resident set (``psutil``) just before it (model, optimizer and input
already built). For ``cmg`` the step is the stage-2 guided step (frozen primary
forward + three secondary branches forward and backward + AdamW update), the
heaviest step of the method.

Prints one JSON line: ``{"method", "shape", "params", "rss_before_mb",
"peak_rss_mb", "step_peak_mb", "step_seconds"}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import psutil
import torch

from brats_grading.train import method_config


def measure(method: str = "cmg", size: int = 128) -> dict:
    """One training step of ``method`` at the ``full`` preset on a ``(1, 4, size^3)`` batch."""
    from brats_grading.model import GradingNet

    overrides = [f"shape={size},{size},{size}", "batch_size=1"]
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
    batch = {"x": torch.randn(1, 4, size, size, size), "y": torch.tensor([1])}
    proc = psutil.Process()
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    out = stage.step_fn(model, batch, None)
    out["loss"].backward()
    opt.step()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "method": method,
        "stage": stage.name or "train",
        "shape": [1, 4, size, size, size],
        "params": sum(p.numel() for p in model.parameters()),
        "rss_before_mb": round(before / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "step_peak_mb": round((peak - before) / 2**20, 1),
        "step_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="cmg")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    print(json.dumps(measure(args.method, args.size)))


if __name__ == "__main__":
    main()
