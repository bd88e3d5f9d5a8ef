"""GPU: the tiny Llava's vanilla fine-tuning step and NPO's unlearning step, bf16 and fp16.

Marked ``gpu``: run by ``nox -s tests_gpu``, skipped by the root conftest where CUDA is
absent. ``MEDAI_GPU_TEST_ON_CPU=1`` rehearses the same bodies on the CPU (bf16 only, no
memory figure); the mark is then dropped so that the conftest does not skip them.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch

from medai_testkit import GPU_DEVICE, GPU_MARKS, GPU_PRECISIONS, GPU_STEPS, gpu_fit_steps
from medcommon.train import TrainConfig, seed_everything
from unlearn_bench.config import finetune_preset
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

pytestmark = GPU_MARKS
PRECISIONS, STEPS = GPU_PRECISIONS, GPU_STEPS
_fit_steps = gpu_fit_steps


@pytest.fixture(scope="module")
def tiny(tiny_data):
    """``(model, encoder, data)``: a fresh tiny Llava (seed 0) and its encoder."""
    data = check_dataset(tiny_data)
    seed_everything(0)
    model, processor = build_tiny(finetune_preset("tiny").model, corpus_texts(data))
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
    cfg = finetune_preset("tiny")
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
    ref = copy.deepcopy(base).eval().requires_grad_(False).to(GPU_DEVICE)
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
