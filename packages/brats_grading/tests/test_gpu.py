"""GPU: both stages of CMG (primary CE, then cross-modality guidance) at the tiny preset, bf16 and fp16.

Marked ``gpu``: run by ``nox -s tests_gpu``, skipped by the root conftest where CUDA is
absent. ``MEDAI_GPU_TEST_ON_CPU=1`` rehearses the same bodies on the CPU (bf16 only, no
memory figure); the mark is then dropped so that the conftest does not skip them.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from brats_grading.data import GradingDataset, class_weights
from brats_grading.model import GradingNet
from brats_grading.train import method_config
from medcommon.train import TrainConfig, Trainer, seed_everything

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
# Generous: the tiny 3D nets need a few MiB; cuDNN's 3D-convolution workspaces come on top.
PEAK_BOUND = 2 * 2**30


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


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("stage_index", [0, 1], ids=["primary", "guided"])
def test_cmg_stage_step(stage_index, precision, tmp_path):
    """One CMG stage as ``brats_grading.train`` runs it; the other branches stay frozen."""
    method, cfg = method_config("cmg", "tiny")
    rng = np.random.default_rng(0)
    labels = [0, 1] * 4
    arrays = rng.standard_normal((len(labels), 4, *cfg.shape)).astype(np.float32)
    seed_everything(0)
    model = GradingNet(cfg.model)
    stage = method.stages(cfg, model, class_weights(labels))[stage_index]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in stage.params:
        p.requires_grad_(True)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen, "a CMG stage trains only some branches"
    config = TrainConfig(
        max_steps=STEPS[precision],
        batch_size=cfg.batch_size,
        mixed_precision=precision,
        log_every=0,
        find_unused_parameters=True,
    )
    optimizer = torch.optim.AdamW(stage.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    dataset = GradingDataset(arrays, labels, flip=cfg.flip)
    _fit_steps(
        model, optimizer, dataset, stage.step_fn, config, tmp_path, f"brats/cmg-{stage.name}"
    )
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p.detach().cpu(), frozen[n]), f"frozen {n} changed"
