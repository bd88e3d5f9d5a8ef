"""Training options: activation checkpointing, mixed precision, the fusion's fallback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from benchmark_scripts import load

from brats_grading import PACKAGE, __version__
from brats_grading import train as T
from brats_grading.config import ModelConfig
from brats_grading.evaluate import load_trained
from brats_grading.methods import Method
from brats_grading.model import GradingNet
from brats_grading.train import fit_method, method_config, train_run
from medcommon.run import RunSpec

TINY = {"stem_channels": 4, "widths": (4, 8), "blocks": (1, 1), "attention_reduction": 2}


def _one_step(checkpointing: bool):
    """Loss, gradients and BN statistics after one train-mode forward/backward."""
    torch.manual_seed(0)
    net = GradingNet(ModelConfig(**TINY, dropout=0.0, checkpoint_activations=checkpointing))
    calls = []
    net.branches["t1"].backbone.layers[0][0].conv1.register_forward_hook(lambda *a: calls.append(1))
    net.train()
    x = torch.randn(2, 4, 6, 16, 16, generator=torch.Generator().manual_seed(1))
    loss = net(x)["logits"].logsumexp(dim=1).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "tracked" in k}
    return loss.detach(), grads, stats, len(calls)


def test_activation_checkpointing_recomputes_and_changes_nothing_else():
    loss0, grads0, stats0, calls0 = _one_step(False)
    loss1, grads1, stats1, calls1 = _one_step(True)
    assert (calls0, calls1) == (1, 2)  # the layer really runs again in the backward pass
    torch.testing.assert_close(loss1, loss0)
    assert grads1.keys() == grads0.keys() and grads0
    for n in grads0:
        torch.testing.assert_close(grads1[n], grads0[n], rtol=1e-4, atol=1e-6)
    for k in stats0:  # the second forward does not count the batch twice in BatchNorm
        torch.testing.assert_close(stats1[k], stats0[k])


def test_mixed_precision_reaches_every_training_stage():
    """``mixed_precision=bf16`` makes every CMG stage's step run under bf16 autocast."""
    method, cfg = method_config(
        "cmg", "tiny", overrides=["mixed_precision=bf16", "model.branch_weights=[1,1,1,1]"]
    )
    seen = []

    def stages(c, net, weight):
        out = method.stages(c, net, weight)
        for st in out:
            step = st.step_fn

            def wrapped(model, batch, ctx, step=step, name=st.name):
                seen.append(
                    (name, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
                )
                return step(model, batch, ctx)

            st.step_fn = wrapped
        return out

    probe = Method("probe", "", method.adjust, stages)
    rng = np.random.default_rng(0)
    labels = [0, 1] * 4
    arrays = rng.standard_normal((8, 4, *cfg.shape)).astype(np.float16)
    fit_method(probe, cfg, arrays, labels, np.arange(8), device="cpu")
    assert {s[0] for s in seen} == {"primary", "guided"}
    assert all(on and dt == torch.bfloat16 for _, on, dt in seen), seen


def test_a_fusion_that_falls_back_to_the_mean_says_so(data19, tmp_path, monkeypatch, capfd):
    """No branch above chance on validation: the plain mean, a warning and metrics.json say so."""
    monkeypatch.setattr(
        T, "_branch_aucs", lambda model, x, y: dict.fromkeys(model.branch_names, 0.4)
    )
    run = tmp_path / "run"
    spec = RunSpec(PACKAGE, __version__, "train", run, data19, method="cmg", preset="tiny",
                   overrides=("steps=1", "primary_steps=1"), quiet=True)  # fmt: skip
    metrics = train_run(spec)
    err = capfd.readouterr().err
    assert "warning: reliability fusion fell back to the plain mean" in err
    saved = json.loads((run / "metrics.json").read_text())
    for fusion in (metrics["fusion"], saved["fusion"]):
        assert fusion["rule"] == "mean" and fusion["weights"] == {}
        assert "t1ce 0.400" in fusion["fallback"]
    model_cfg = json.loads((run / "model" / "config.json").read_text())
    assert model_cfg["branch_weights"] == []
    net = load_trained(run).model
    assert net.fusion_weights(net.branch_names) == pytest.approx(
        dict.fromkeys(net.branch_names, 0.25)
    )


def test_gpu_estimate_by_hand():
    """1 M parameters, 0.5 M trainable, a 100 MiB step peak at batch 1."""
    gpu_estimate = load("memory/probe.py", "brats_memory_probe").gpu_estimate

    probe = {"params": 2**20, "trainable": 2**19, "step_peak_mb": 100.0, "precision": "no"}
    est = gpu_estimate(probe, batch=4)
    # fixed: 4 B x 1 Mi + 12 B x 0.5 Mi = 10 MiB; per sample: 100 MiB - 6 MiB = 94 MiB
    assert est == {"fixed_mb": 10, "per_sample_mb": 94, "batch4_mb": 10 + 4 * 94}
    bf16 = gpu_estimate({**probe, "precision": "bf16"}, batch=4)
    assert bf16["fixed_mb"] == 12  # + a 2 B copy of every weight
