"""GPU: PBBL's debiasing step (bias-balanced softmax) at the tiny preset under bf16 and fp16.

Marked ``gpu``: run by ``nox -s tests_gpu``, skipped by the root conftest where CUDA is
absent. ``MEDAI_GPU_TEST_ON_CPU=1`` rehearses the same bodies on the CPU (bf16 only, no
memory figure); the mark is then dropped so that the conftest does not skip them.
"""

from __future__ import annotations

import pytest

from medai_testkit import GPU_MARKS, GPU_PRECISIONS, GPU_STEPS, gpu_fit_steps
from medcommon.train import TrainConfig, seed_everything
from pbbl_cxr.config import run_preset
from pbbl_cxr.data import DataOptions, load_split
from pbbl_cxr.methods import make_bbs_step, make_gce_step
from pbbl_cxr.models import build_model
from pbbl_cxr.pseudo import bias_prior, log_prior
from pbbl_cxr.train import make_optimizer

pytestmark = GPU_MARKS
PRECISIONS, STEPS = GPU_PRECISIONS, GPU_STEPS
_fit_steps = gpu_fit_steps


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
