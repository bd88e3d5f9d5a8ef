"""GPU: the tiny Llava's vanilla fine-tuning step and NPO's unlearning step, bf16 and fp16.

Marked ``gpu``: run by ``nox -s tests_gpu``, skipped by the root conftest where CUDA is
absent. ``MEDAI_GPU_TEST_ON_CPU=1`` rehearses the same bodies on the CPU (bf16 only, no
memory figure); the mark is then dropped so that the conftest does not skip them.
"""

from __future__ import annotations

import copy
import json
import os
from functools import partial

import pytest
import torch

from medcommon.train import TrainConfig, Trainer, seed_everything
from unlearn_bench.config import preset_finetune
from unlearn_bench.data import (
    EncodedSet,
    Encoder,
    PairedSet,
    check_dataset,
    collate,
    corpus_texts,
    paired_collate,
)
from unlearn_bench.losses import nll
from unlearn_bench.methods import METHODS, forward
from unlearn_bench.model import build_tiny

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
# Generous: the tiny Llava needs a few MiB; cuBLAS workspaces come on top.
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
def tiny(tiny_data):
    """``(model, encoder, data)``: a fresh tiny Llava (seed 0) and its encoder."""
    data = check_dataset(tiny_data)
    seed_everything(0)
    model, processor = build_tiny(preset_finetune("tiny").model, corpus_texts(data))
    return model, Encoder(processor, tiny_data), data


def _config(precision: str, batch_size: int, max_grad_norm: float | None) -> TrainConfig:
    return TrainConfig(
        max_steps=STEPS[precision],
        batch_size=batch_size,
        max_grad_norm=max_grad_norm,
        mixed_precision=precision,
        log_every=0,
    )


@pytest.mark.parametrize("precision", PRECISIONS)
def test_finetune_step(precision, tiny, tmp_path):
    """The vanilla model's answer NLL on forget + retain, as ``unlearn_bench.train.finetune``."""
    base, enc, data = tiny
    model = copy.deepcopy(base).train()
    cfg = preset_finetune("tiny")
    encoded = [enc.encode(it) for it in data["forget"] + data["retain"]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def step(m, batch, ctx):
        return {"loss": nll(forward(m, batch).logits, batch["labels"])}

    config = _config(precision, min(cfg.batch_size, len(encoded)), cfg.max_grad_norm)
    collate_fn = partial(collate, pad_id=enc.tokenizer.pad_token_id)
    _fit_steps(
        model, optimizer, EncodedSet(encoded), step, config, tmp_path, "unlearn/finetune",
        collate_fn=collate_fn,
    )  # fmt: skip


@pytest.mark.parametrize("precision", PRECISIONS)
def test_npo_step(precision, tiny, tmp_path):
    """NPO against a frozen reference on the device, with the retain NLL term."""
    base, enc, data = tiny
    model = copy.deepcopy(base).train()
    cls = METHODS.get("npo")
    cfg = cls.preset_config("tiny")
    ref = copy.deepcopy(base).eval().requires_grad_(False).to(DEVICE)
    method = cls(cfg, ref=ref, seed=0)
    method.setup(model)
    forget = [enc.encode(it, method.forget_answer(it)) for it in data["forget"]]
    dataset = PairedSet(forget, [enc.encode(it) for it in data["retain"]], seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    config = _config(precision, min(cfg.batch_size, len(forget)), cfg.max_grad_norm)
    collate_fn = partial(paired_collate, pad_id=enc.tokenizer.pad_token_id)
    _fit_steps(
        model, optimizer, dataset, method.loss, config, tmp_path, "unlearn/npo",
        collate_fn=collate_fn,
    )  # fmt: skip
