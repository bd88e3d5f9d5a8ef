"""Shared fixtures: a tiny dataset and a tiny vanilla run, built once per session in tmp."""

from __future__ import annotations

import pytest
import torch

from unlearn_bench.config import SynthConfig


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)


TINY = SynthConfig(n_entities=10, n_general=2, image_size=32, forget_ratio=0.2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from unlearn_bench.synth import generate

    out = tmp_path_factory.mktemp("data") / "privacy"
    generate(out, "privacy", TINY, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data):
    """A vanilla run of 4 steps (enough to exercise every file it writes)."""
    from unlearn_bench.cli import main

    out = tmp_path_factory.mktemp("runs") / "vanilla"
    code = main(
        [
            "finetune",
            "--data",
            str(tiny_data),
            "--out",
            str(out),
            "--quiet",
            "--device",
            "cpu",
            "--set",
            "epochs=0.06",
            "--set",
            "batch_size=8",
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def tiny(tiny_data):
    """``(model, encoder, splits)``: a fresh tiny Llava (seed 0) in eval mode, one per module."""
    from medcommon.train import seed_everything
    from unlearn_bench.config import TinyModelConfig
    from unlearn_bench.data import Encoder, check_dataset, corpus_texts
    from unlearn_bench.model import build_tiny

    seed_everything(0)
    data = check_dataset(tiny_data)
    model, processor = build_tiny(TinyModelConfig(), corpus_texts(data))
    return model.eval(), Encoder(processor, tiny_data), data


@pytest.fixture(scope="session")
def knowledge_data(tmp_path_factory):
    """A small dataset with issue #23's settings: two training wordings, validation probes
    and the verbatim holdout, a clean membership holdout."""
    import dataclasses

    from unlearn_bench.synth import generate

    out = tmp_path_factory.mktemp("data") / "knowledge"
    cfg = dataclasses.replace(TINY, train_wordings=2, validation_probes=True, holdout_clean=True)
    generate(out, "privacy", cfg, seed=0)
    return out
