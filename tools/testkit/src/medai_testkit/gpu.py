"""The ``gpu`` tests' shared step: a few mixed-precision steps of medcommon's Trainer.

Run by ``nox -s tests_gpu``; ``MEDAI_GPU_TEST_ON_CPU=1`` rehearses them on the CPU.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

GPU_ON_CPU = os.environ.get("MEDAI_GPU_TEST_ON_CPU") == "1"
"""``MEDAI_GPU_TEST_ON_CPU=1`` rehearses the ``gpu`` tests on the CPU (bf16 only, no memory figure)."""
GPU_DEVICE = "cpu" if GPU_ON_CPU else "cuda"
GPU_MARKS = [] if GPU_ON_CPU else [pytest.mark.gpu]
"""A test module's ``pytestmark``: ``gpu`` unless rehearsing on the CPU (the root conftest
skips ``gpu`` tests where CUDA is absent)."""
GPU_PRECISIONS = [
    "bf16",
    pytest.param("fp16", marks=pytest.mark.skipif(GPU_ON_CPU, reason="fp16 autocast needs CUDA")),
]
_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
# fp16: the gradient scaler skips the steps whose scaled gradients overflow while it
# finds its scale (from 2**16, halving), so it gets more steps for the weights to move.
GPU_STEPS = {"bf16": 3, "fp16": 6}


def gpu_fit_steps(
    model,
    optimizer,
    dataset,
    step_fn,
    config,
    tmp_path,
    tag: str,
    peak_bound: int = 2 * 2**30,
    **kw,
):
    """Run ``config.max_steps`` steps of medcommon's Trainer on GPU_DEVICE; check autocast, finite losses, moved weights.

    Returns ``{"losses", "peak_bytes"}``; ``peak_bytes`` is ``torch.cuda.max_memory_allocated()``
    over the last optimizer step (None on the CPU) and is also written to
    ``tmp_path/gpu_memory.json``; it must stay under ``peak_bound`` (generous: the tiny
    models need a few MiB, cuDNN and cuBLAS workspaces come on top).
    """
    if (
        GPU_DEVICE == "cuda"
        and config.mixed_precision == "bf16"
        and not torch.cuda.is_bf16_supported()
    ):
        pytest.skip("this GPU has no bf16 support")
    last = config.max_steps - 1
    losses: list[float] = []
    autocast: list[tuple[bool, torch.dtype]] = []

    def step(m, batch, ctx):
        if GPU_DEVICE == "cuda" and ctx.step == last and ctx.micro_step == 0:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        autocast.append(
            (torch.is_autocast_enabled(GPU_DEVICE), torch.get_autocast_dtype(GPU_DEVICE))
        )
        out = step_fn(m, batch, ctx)
        losses.append(float((out["loss"] if isinstance(out, dict) else out).detach()))
        return out

    before = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    from medcommon.train import Trainer

    Trainer(
        model, optimizer, dataset, step, config=config, device=GPU_DEVICE, quiet=True, **kw
    ).fit()
    peak = None
    if GPU_DEVICE == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()

    assert autocast and all(
        on and dt == _AUTOCAST_DTYPE[config.mixed_precision] for on, dt in autocast
    )
    assert len(losses) == config.max_steps * config.grad_accum_steps
    assert all(torch.isfinite(torch.tensor(losses))), losses
    after = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in before), "no weight changed"
    record = {"test": tag, "device": GPU_DEVICE, "precision": config.mixed_precision}
    record.update(steps=config.max_steps, losses=losses, peak_bytes=peak)
    (tmp_path / "gpu_memory.json").write_text(json.dumps(record, indent=2) + "\n")
    if peak is not None:
        print(f"{tag} {config.mixed_precision}: peak {peak / 2**20:.1f} MiB over one step")
        assert 0 < peak < peak_bound
    return {"losses": losses, "peak_bytes": peak}
