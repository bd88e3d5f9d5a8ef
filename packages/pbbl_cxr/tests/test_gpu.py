"""GPU: PBBL's debiasing step (bias-balanced softmax) at the tiny preset under bf16 and fp16.

Marked ``gpu``: run by ``nox -s tests_gpu``, skipped by the root conftest where CUDA is
absent. ``MEDAI_GPU_TEST_ON_CPU=1`` rehearses the same bodies on the CPU (bf16 only, no
memory figure); the mark is then dropped so that the conftest does not skip them.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from medcommon.train import TrainConfig, Trainer, seed_everything
from pbbl_cxr.config import run_preset
from pbbl_cxr.data import DataOptions, load_split
from pbbl_cxr.methods import make_bbs_step, make_gce_step
from pbbl_cxr.models import build_model
from pbbl_cxr.pseudo import bias_prior, log_prior
from pbbl_cxr.train import make_optimizer

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
# Generous: the tiny CNN needs a few MiB; cuDNN and cuBLAS workspaces come on top.
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


@pytest.fixture(scope="module")
def train_set(gbp_tiny):
    return load_split(
        gbp_tiny, "train", DataOptions(image_size=run_preset("tiny").model.image_size)
    )


def _config(precision: str) -> TrainConfig:
    cfg = run_preset("tiny")
    return TrainConfig(
        max_steps=STEPS[precision],
        batch_size=cfg.batch_size,
        max_grad_norm=cfg.max_grad_norm,
        mixed_precision=precision,
        log_every=0,
    )


@pytest.mark.parametrize("precision", PRECISIONS)
def test_bias_balanced_softmax_step(precision, train_set, tmp_path):
    """Stage 2 of PBBL: CE(z + log P[b_hat], y), b_hat standing in for the pseudo bias labels."""
    cfg = run_preset("tiny")
    c = cfg.model.num_classes
    b_hat = train_set.bias  # stage 1's pseudo labels would be an estimate of these
    step = make_bbs_step(
        log_prior(bias_prior(b_hat, train_set.labels, c, c), cfg.prior_eps), "bias_hat"
    )
    seed_everything(0)
    model = build_model(cfg.model)
    train = train_set.with_bias_hat(b_hat)
    _fit_steps(
        model, make_optimizer(model, cfg), train, step, _config(precision), tmp_path, "pbbl/bbs"
    )


@pytest.mark.parametrize("precision", PRECISIONS)
def test_gce_bias_model_step(precision, train_set, tmp_path):
    """Stage 1 of PBBL: the GCE-trained biased model (q-power of the softmax, sensitive to fp16)."""
    cfg = run_preset("tiny")
    seed_everything(0)
    model = build_model(cfg.model)
    step = make_gce_step(cfg.gce_q, "bias_hat")
    _fit_steps(
        model, make_optimizer(model, cfg), train_set, step, _config(precision), tmp_path, "pbbl/gce"
    )
