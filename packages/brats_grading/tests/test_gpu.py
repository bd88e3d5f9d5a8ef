"""GPU: both stages of CMG (primary CE, then cross-modality guidance) at the tiny preset, bf16 and fp16.

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
from medcommon.testing import GPU_MARKS, GPU_PRECISIONS, GPU_STEPS, gpu_fit_steps
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
