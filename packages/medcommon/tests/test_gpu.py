"""GPU: the training loop's mixed-precision steps on CUDA (bf16 and fp16), and their peak memory.

Marked ``gpu``: run by ``nox -s tests_gpu``, skipped by the root conftest where CUDA is
absent. ``MEDAI_GPU_TEST_ON_CPU=1`` rehearses the same bodies on the CPU (bf16 only, no
memory figure); the mark is then dropped so that the conftest does not skip them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from medcommon.train import TrainConfig, Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from toy_train import ToyNet, make_data

ON_CPU = os.environ.get("MEDAI_GPU_TEST_ON_CPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"
pytestmark = [] if ON_CPU else [pytest.mark.gpu]
PRECISIONS = [
    "bf16",
    pytest.param("fp16", marks=pytest.mark.skipif(ON_CPU, reason="fp16 autocast needs CUDA")),
]
AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
# fp16: the gradient scaler skips the steps whose scaled gradients overflow while it
# finds its scale (from 2**16, halving), so it gets more steps for the weights to move.
STEPS = {"bf16": 3, "fp16": 6}
# Generous: the toy model needs kilobytes; cuBLAS workspaces come from the same allocator.
PEAK_BOUND = 1 * 2**30


def _fit_steps(model, optimizer, dataset, step_fn, config: TrainConfig, tmp_path, tag: str, **kw):
    """Run ``config.max_steps`` steps on DEVICE; check autocast, finite losses, moved weights.

    Returns ``{"losses", "peak_bytes"}``; ``peak_bytes`` is ``torch.cuda.max_memory_allocated()``
    over the last optimizer step (None on the CPU) and is also written to ``tmp_path``.
    """
    if DEVICE == "cuda" and config.mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16 support")
    last = config.max_steps - 1
    losses: list[float] = []
    autocast: list[tuple[bool, torch.dtype]] = []

    def step(m, batch, ctx):
        if DEVICE == "cuda" and ctx.step == last and ctx.micro_step == 0:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        autocast.append((torch.is_autocast_enabled(DEVICE), torch.get_autocast_dtype(DEVICE)))
        out = step_fn(m, batch, ctx)
        losses.append(float((out["loss"] if isinstance(out, dict) else out).detach()))
        return out

    before = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    Trainer(model, optimizer, dataset, step, config=config, device=DEVICE, quiet=True, **kw).fit()
    peak = None
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()

    assert autocast and all(
        on and dt == AUTOCAST_DTYPE[config.mixed_precision] for on, dt in autocast
    )
    assert len(losses) == config.max_steps * config.grad_accum_steps
    assert all(torch.isfinite(torch.tensor(losses))), losses
    after = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in before), "no weight changed"
    record = {"test": tag, "device": DEVICE, "precision": config.mixed_precision}
    record.update(steps=config.max_steps, losses=losses, peak_bytes=peak)
    (tmp_path / "gpu_memory.json").write_text(json.dumps(record, indent=2) + "\n")
    if peak is not None:
        print(f"{tag} {config.mixed_precision}: peak {peak / 2**20:.1f} MiB over one step")
        assert 0 < peak < PEAK_BOUND
    return {"losses": losses, "peak_bytes": peak}


def _mse_step(m, batch, ctx):
    x, y = batch
    return torch.nn.functional.mse_loss(m(x), y)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_mixed_precision_step_with_accumulation_and_clipping(precision, tmp_path):
    """Two micro-batches (no_sync on the first) and gradient clipping (unscaled first in fp16)."""
    seed_everything(0)
    model = ToyNet()
    cfg = TrainConfig(
        max_steps=STEPS[precision],
        batch_size=32,
        grad_accum_steps=2,
        max_grad_norm=1.0,
        mixed_precision=precision,
        log_every=0,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    _fit_steps(model, optimizer, make_data(), _mse_step, cfg, tmp_path, "medcommon/toy")
