"""GPU: the training loop's mixed-precision steps on CUDA (bf16 and fp16), and their peak memory.

Marked ``gpu``: run by ``nox -s tests_gpu``, skipped by the root conftest where CUDA is
absent. ``MEDAI_GPU_TEST_ON_CPU=1`` rehearses the same bodies on the CPU (bf16 only, no
memory figure); the mark is then dropped so that the conftest does not skip them.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

from medai_testkit import GPU_MARKS, GPU_PRECISIONS, GPU_STEPS, gpu_fit_steps
from medcommon.train import TrainConfig, seed_everything

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from toy_train import ToyNet, make_data

pytestmark = GPU_MARKS
PRECISIONS, STEPS = GPU_PRECISIONS, GPU_STEPS
_fit_steps = functools.partial(gpu_fit_steps, peak_bound=1 * 2**30)


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
