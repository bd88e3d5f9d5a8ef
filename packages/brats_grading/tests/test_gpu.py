"""GPU: both stages of CMG at the tiny preset (bf16, fp16), and one full-shape bf16 step.

Marked ``gpu``: run by ``nox -s tests_gpu``, skipped by the root conftest where CUDA is
absent. ``MEDAI_GPU_TEST_ON_CPU=1`` rehearses the same bodies on the CPU (bf16 only, no
memory figure); the mark is then dropped so that the conftest does not skip them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brats_grading.data import GradingDataset, class_weights
from brats_grading.model import GradingNet
from brats_grading.train import method_config
from medai_testkit import GPU_MARKS, GPU_ON_CPU, GPU_PRECISIONS, GPU_STEPS, gpu_fit_steps
from medcommon.train import TrainConfig, seed_everything

pytestmark = GPU_MARKS
PRECISIONS, STEPS = GPU_PRECISIONS, GPU_STEPS
_fit_steps = gpu_fit_steps


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


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
def test_full_shape_guided_step_bf16(checkpointing, tmp_path):
    """One CMG stage-2 step of the ``full`` preset at its real shape and batch, in bf16.

    The heaviest step of the package (three MC3-18 branches forward and backward at
    4 x 128^3, the frozen teacher forward); the peak is written to ``gpu_memory.json``
    and printed, to compare with the README's memory table. The CPU rehearsal runs
    the same body at 32^3 and batch 1 (the full shape needs several GB per sample).
    """
    overrides = [f"model.checkpoint_activations={str(checkpointing).lower()}"]
    if GPU_ON_CPU:
        overrides += ["shape=32,32,32", "batch_size=1"]
    method, cfg = method_config("cmg", "full", overrides=overrides)
    assert GPU_ON_CPU or (cfg.shape, cfg.batch_size) == ((128, 128, 128), 4)
    labels = [0, 1] * cfg.batch_size
    arrays = np.random.default_rng(0).standard_normal((len(labels), 4, *cfg.shape))
    seed_everything(0)
    model = GradingNet(cfg.model)
    stage = method.stages(cfg, model, class_weights(labels))[-1]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in stage.params:
        p.requires_grad_(True)
    config = TrainConfig(
        max_steps=1,
        batch_size=cfg.batch_size,
        mixed_precision="bf16",
        log_every=0,
        find_unused_parameters=True,
    )
    optimizer = torch.optim.AdamW(stage.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    dataset = GradingDataset(arrays.astype(np.float16), labels, flip=False)
    tag = f"brats/cmg-full-guided-{'checkpointed' if checkpointing else 'stored'}"
    _fit_steps(
        model, optimizer, dataset, stage.step_fn, config, tmp_path, tag, peak_bound=96 * 2**30
    )
