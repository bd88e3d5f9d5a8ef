"""pbbl_cxr.distributed in one process: every helper is the identity (the DDP runs are test_ddp.py)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from pbbl_cxr.config import ModelConfig
from pbbl_cxr.distributed import (
    GlobalBatchNorm,
    all_gather_cat,
    all_reduce_sum,
    restore_batchnorm,
    use_global_batchnorm,
    world_size,
)
from pbbl_cxr.models import build_model


def test_collectives_are_the_identity_alone():
    t = torch.arange(5.0)
    assert world_size() == 1
    assert all_gather_cat(t) is t
    assert all_reduce_sum(t) is t and all_reduce_sum(t, grad=True) is t


def test_global_batchnorm_round_trip_trains_like_batchnorm():
    torch.manual_seed(0)
    ref = build_model(ModelConfig(width=4, image_size=24)).train()
    net = copy.deepcopy(ref)
    use_global_batchnorm(net)
    kinds = [type(m) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert kinds and all(k is GlobalBatchNorm for k in kinds)
    assert list(net.state_dict()) == list(ref.state_dict())
    x = torch.rand(6, 1, 24, 24)
    out, out_ref = net(x), ref(x)  # one process: plain BatchNorm, running stats updated
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    out.sum().backward()
    out_ref.sum().backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
    restore_batchnorm(net)
    kinds = {type(m) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert kinds == {nn.BatchNorm2d}
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
