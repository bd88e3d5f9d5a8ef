"""What each ``--method`` is: its model fields and its training stages (the table in methods/)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from brats_grading.config import MODALITIES
from brats_grading.methods import METHODS
from brats_grading.model import GradingNet
from brats_grading.train import method_config

EXPECTED = {  # method: (inputs, modality or None, fusion or None, attention)
    **{f"single-{m}": ("single", m, None, True) for m in MODALITIES},
    "early-fusion": ("early", None, None, True),
    "late-fusion": ("branches", None, "mean", True),
    "cmg": ("branches", None, "reliability", True),
    "cmg-no-attention": ("branches", None, "reliability", False),
    "cmg-no-guidance": ("branches", None, "reliability", True),
    "cmg-proj": ("branches", None, "reliability", True),
    "cmg-mid": ("branches", None, "reliability", True),
}


def test_every_method_is_listed_here():
    assert set(METHODS.names()) == set(EXPECTED)


@pytest.mark.parametrize("method", list(EXPECTED))
def test_method_model_fields_and_stages(method):
    inputs, modality, fusion, attention = EXPECTED[method]
    _, base = method_config("cmg", "tiny")
    m, cfg = method_config(method, "tiny", overrides=["steps=3", "primary_steps=5"])
    mc = cfg.model
    assert (mc.inputs, mc.attention) == (inputs, attention)
    if modality:
        assert mc.modality == modality
    if fusion:
        assert mc.fusion == fusion
    torch.manual_seed(0)
    net = GradingNet(mc)
    stages = m.stages(cfg, net, None)
    params = {n: {id(p) for p in net.branches[n].parameters()} for n in net.branch_names}
    if method.startswith("cmg"):
        g = cfg.guidance
        if method == "cmg-no-guidance":
            assert (g.kd_weight, g.feature_weight) == (0.0, 0.0)
            assert g.temperature == base.guidance.temperature
        elif method == "cmg-mid":  # CMG's guidance plus intermediate alignment
            assert g.mid_weight > 0 and g == replace(base.guidance, mid_weight=g.mid_weight)
        else:
            assert g == base.guidance and g.kd_weight > 0 and g.feature_weight > 0
            assert mc.align_head == (method == "cmg-proj")
        primary, guided = stages
        assert (primary.name, primary.steps, primary.trainable) == ("primary", 5, ["t1ce"])
        assert {id(p) for p in primary.params} == params["t1ce"]
        assert (guided.name, guided.steps, guided.trainable) == ("guided", 3, ["t1", "t2", "flair"])
        assert {id(p) for p in guided.params} == set().union(
            *(params[n] for n in ("t1", "t2", "flair"))
        )
    else:
        (stage,) = stages
        assert (stage.name, stage.steps, stage.trainable) == (None, 3, net.branch_names)
        assert {id(p) for p in stage.params} == set().union(*params.values())


def test_single_stage_ce_averages_its_branches_with_class_weights():
    m, cfg = method_config("late-fusion", "tiny", overrides=["model.dropout=0"])
    torch.manual_seed(0)
    net = GradingNet(cfg.model).eval()
    weight = torch.tensor([3.0, 1.0])
    (stage,) = m.stages(cfg, net, weight)
    x = torch.randn(4, 4, *cfg.shape, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 1, 1])
    got = stage.step_fn(net, {"x": x, "y": y}, None)["loss"]
    ref = sum(
        torch.nn.functional.cross_entropy(net.branches[n](x[:, [i]])["logits"], y, weight=weight)
        for i, n in enumerate(MODALITIES)
    ) / len(MODALITIES)
    torch.testing.assert_close(got, ref)


def test_cmg_stage_one_is_the_primary_cross_entropy_alone():
    m, cfg = method_config("cmg", "tiny", overrides=["model.dropout=0"])
    torch.manual_seed(0)
    net = GradingNet(cfg.model).eval()
    weight = torch.tensor([3.0, 1.0])
    calls = []
    for name, branch in net.branches.items():
        branch.register_forward_hook(lambda *a, name=name: calls.append(name))
    x = torch.randn(4, 4, *cfg.shape, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 1, 1])
    got = m.stages(cfg, net, weight)[0].step_fn(net, {"x": x, "y": y}, None)["loss"]
    assert calls == ["t1ce"]  # the other branches are not even run
    ref = torch.nn.functional.cross_entropy(
        net.branches["t1ce"](x[:, [1]])["logits"], y, weight=weight
    )
    torch.testing.assert_close(got, ref)


def test_unwrap_reaches_the_model_inside_a_ddp_style_wrapper():
    """Under DDP (Accelerate, several GPUs) the step functions get the wrapper, whose
    ``branches`` live on ``.module``; the teacher must be found there."""
    from brats_grading.methods.base import unwrap

    net = GradingNet(method_config("cmg", "tiny")[1].model)
    wrapper = torch.nn.Module()
    wrapper.module = net
    assert unwrap(wrapper) is net and unwrap(net) is net
