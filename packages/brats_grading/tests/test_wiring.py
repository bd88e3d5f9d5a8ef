"""The wiring of CMG and of the dual attention, each against an independent reference.

Each test here is aimed at one broken wiring that the other tests let through:
guidance switched off in stage 2, the teacher left in train mode, the teacher's
outputs not detached, the spatial attention matrix not transposed, and a changed
sum of the two attention heads.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brats_grading.attention import DualAttention, SliceAttention, SpatialAttention
from brats_grading.data import class_weights
from brats_grading.losses import guidance_loss
from brats_grading.model import GradingNet
from brats_grading.train import method_config

Y = torch.tensor([1, 0, 1, 1])


def _setup(method: str = "cmg", *overrides: str):
    """A tiny model of ``method`` whose primary was trained a little (BN stats moved)."""
    m, cfg = method_config(method, "tiny", overrides=["model.dropout=0", *overrides])
    torch.manual_seed(0)
    net = GradingNet(cfg.model)
    x = torch.randn(4, 4, *cfg.shape, generator=torch.Generator().manual_seed(1))
    x = x + Y.view(-1, 1, 1, 1, 1) * 0.5
    weight = class_weights(Y.tolist())
    stages = m.stages(cfg, net, weight)
    net.train()
    with torch.no_grad():  # two train-mode passes: running stats differ from batch stats
        for _ in range(2):
            net(x)
    return cfg, net, stages, {"x": x, "y": Y}, weight


def _reference_guided_loss(cfg, net, batch, weight) -> torch.Tensor:
    """Stage 2 written out (README / Hinton et al. 2015), the teacher in eval mode.

    Variants (issue #11): a secondary's features pass its ``align`` projection before
    the alignment, and ``mid_weight`` adds the same alignment on the pooled output of
    the second-to-last MC3 layer (read here with forward hooks, independently of the
    branch's own ``mid_features``).
    """
    g, primary = cfg.guidance, cfg.model.primary
    x, y = batch["x"], batch["y"]
    teacher = net.branches[primary]

    def run(branch, inp):
        seen = []
        hook = branch.backbone.layers[-2].register_forward_hook(lambda m, i, o: seen.append(o))
        out = branch(inp)
        hook.remove()
        return out, seen[0].mean(dim=(2, 3, 4))

    teacher.eval()
    with torch.no_grad():
        t_out, t_mid = run(teacher, x[:, [1]])  # t1ce is channel 1
    teacher.train()
    t = g.temperature
    terms = []
    for name in ("t1", "t2", "flair"):
        branch = net.branches[name]
        s_out, s_mid = run(branch, x[:, [("t1", "t1ce", "t2", "flair").index(name)]])
        ce = F.cross_entropy(s_out["logits"], y, weight=weight)
        kd = F.kl_div(
            F.log_softmax(s_out["logits"] / t, 1),
            F.log_softmax(t_out["logits"] / t, 1),
            log_target=True,
            reduction="batchmean",
        )
        f_s = s_out["features"] if branch.align is None else branch.align(s_out["features"])
        cos = F.cosine_similarity(f_s, t_out["features"], dim=1)
        cos_mid = F.cosine_similarity(s_mid, t_mid, dim=1)
        terms.append(
            g.ce_weight * ce
            + g.kd_weight * t * t * kd
            + g.feature_weight * (2 - 2 * cos).mean()
            + g.mid_weight * (2 - 2 * cos_mid).mean()
        )
    return sum(terms) / len(terms)


@pytest.mark.parametrize("method", ["cmg-proj", "cmg-mid"])
def test_guidance_variants_are_the_guided_objective_written_out(method):
    """cmg-proj aligns through each secondary's own projection; cmg-mid adds the
    intermediate-feature alignment. The projection is moved off the identity so that
    aligning the raw features instead would give a different loss."""
    cfg, net, stages, batch, weight = _setup(method)
    if method == "cmg-proj":
        f = torch.randn(3, net.branches["t1"].fc.in_features)
        for name in ("t1", "t2", "flair"):  # identity at the start: cmg-proj starts as cmg
            torch.testing.assert_close(net.branches[name].align(f), f)
        for name in ("t1", "t2", "flair"):
            with torch.no_grad():
                net.branches[name].align.weight.normal_(0, 1.0)
        assert net.branches["t1ce"].align is not None
    else:
        assert cfg.guidance.mid_weight > 0 and net.branches["t1"].align is None
    ref = _reference_guided_loss(cfg, net, batch, weight)
    net.train()
    out = stages[1].step_fn(net, batch, None)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    out["loss"].backward()
    if method == "cmg-proj":  # the projection learns in stage 2
        assert net.branches["flair"].align.weight.grad.abs().sum() > 0
    # the variants only add to CMG: without them, the reference is CMG's own loss
    base_cfg = method_config("cmg", "tiny", overrides=["model.dropout=0"])[1]
    assert (base_cfg.guidance.mid_weight, base_cfg.model.align_head) == (0.0, False)


@pytest.mark.parametrize("method", ["cmg", "cmg-no-attention"])
def test_stage_two_is_the_guided_objective_with_an_eval_mode_teacher(method):
    cfg, net, stages, batch, weight = _setup(method)
    assert cfg.guidance.kd_weight > 0 and cfg.guidance.feature_weight > 0
    guided = stages[1]
    assert (guided.name, guided.trainable) == ("guided", ["t1", "t2", "flair"])
    assert {id(p) for p in guided.params} == {
        id(p) for n in ("t1", "t2", "flair") for p in net.branches[n].parameters()
    }
    ref = _reference_guided_loss(cfg, net, batch, weight)
    net.train()
    got = guided.step_fn(net, batch, None)["loss"]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_no_guidance_ablation_is_cross_entropy_only():
    _cfg, net, stages, batch, weight = _setup("cmg-no-guidance")
    net.train()
    got = stages[1].step_fn(net, batch, None)["loss"]
    ref = (
        sum(
            F.cross_entropy(net.branches[n](batch["x"][:, [i]])["logits"], Y, weight=weight)
            for i, n in ((0, "t1"), (2, "t2"), (3, "flair"))
        )
        / 3
    )
    torch.testing.assert_close(got, ref)


def test_the_frozen_teacher_gets_no_gradient_even_when_its_weights_could_take_one():
    _cfg, net, stages, batch, _ = _setup()
    for p in net.parameters():  # as if the stage forgot to freeze it
        p.requires_grad_(True)
    graph = []  # the teacher's forward builds no graph (no activations kept for it)
    net.branches["t1ce"].fc.register_forward_hook(lambda m, i, o: graph.append(o.requires_grad))
    net.train()
    stages[1].step_fn(net, batch, None)["loss"].backward()
    assert graph == [False]
    assert all(p.grad is None for p in net.branches["t1ce"].parameters())
    assert all(p.grad is not None for p in net.branches["flair"].parameters())


def test_an_unfrozen_primary_learns_from_its_own_cross_entropy_only():
    """Guidance flows primary -> secondary: the KL and alignment terms detach the teacher,
    so the primary's gradient is that of its own CE."""
    _cfg, net, stages, batch, weight = _setup("cmg", "guidance.freeze_primary=false")
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    stages[1].step_fn(net, batch, None)["loss"].backward()
    got = {n: p.grad.clone() for n, p in net.branches["t1ce"].named_parameters()}
    net.load_state_dict(state)
    net.zero_grad()
    F.cross_entropy(net.branches["t1ce"](batch["x"][:, [1]])["logits"], Y, weight=weight).backward()
    for n, p in net.branches["t1ce"].named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)


# ------------------------------------------------------------------ dual attention


def danet_position_attention(x2d, wq, bq, wk, bk, wv, bv, gamma, scale):
    """DANet's position attention module (Fu et al. 2019, ``PAM_Module``) on one
    ``(B, C, H, W)`` image, written as in the authors' code; ``scale`` multiplies the
    energies (DANet: 1; ours: ``1/sqrt(C')``)."""
    b, c, h, w = x2d.shape
    proj_query = F.conv2d(x2d, wq, bq).view(b, -1, w * h).permute(0, 2, 1)
    proj_key = F.conv2d(x2d, wk, bk).view(b, -1, w * h)
    energy = torch.bmm(proj_query, proj_key) * scale
    attention = torch.softmax(energy, dim=-1)
    proj_value = F.conv2d(x2d, wv, bv).view(b, -1, w * h)
    out = torch.bmm(proj_value, attention.permute(0, 2, 1))
    return gamma * out.view(b, c, h, w) + x2d, attention


def _spatial_reference(mod: SpatialAttention, x: torch.Tensor):
    """``SpatialAttention`` as DANet's PAM applied to each slice separately."""
    w = {n: getattr(mod, n).weight[..., 0, 0, 0] for n in ("query", "key", "value")}
    args = []
    for n in ("query", "key", "value"):
        args += [w[n][:, :, None, None], getattr(mod, n).bias]
    scale = 1 / mod.query.out_channels**0.5
    outs, maps = [], []
    for d in range(x.shape[2]):
        o, a = danet_position_attention(x[:, :, d], *args, mod.gamma, scale)
        outs.append(o)
        maps.append(a)
    return torch.stack(outs, 2), torch.stack(maps, 1)


def test_spatial_attention_is_danet_position_attention_per_slice():
    torch.manual_seed(2)
    mod = SpatialAttention(6, reduction=2)
    with torch.no_grad():
        mod.gamma.fill_(0.7)
    x = torch.randn(2, 6, 3, 4, 5)  # H != W and D > 1 catch a wrong reshape as well
    y, attn = mod(x)
    ref_y, ref_attn = _spatial_reference(mod, x)
    torch.testing.assert_close(attn, ref_attn)
    torch.testing.assert_close(y, ref_y)


def _slice_reference(mod: SliceAttention, x: torch.Tensor) -> torch.Tensor:
    desc = x.mean(dim=(3, 4)).transpose(1, 2)  # (B, D, C)
    q, k = mod.query(desc), mod.key(desc)
    a = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
    return x + mod.gamma * torch.einsum("bij,bcjhw->bcihw", a, mod.value(x))


def test_dual_attention_is_one_residual_plus_both_heads():
    """``x + gamma_s * PAM(x) + gamma_d * SliceAttn(x)``: both heads read the same x, the
    input counted once."""
    torch.manual_seed(3)
    mod = DualAttention(6, reduction=2)
    x = torch.randn(2, 6, 3, 4, 4)
    y0, _ = mod(x)
    torch.testing.assert_close(y0, x)  # both gammas 0: the identity
    with torch.no_grad():
        mod.spatial.gamma.fill_(0.6)
        mod.slice.gamma.fill_(-0.4)
    y, maps = mod(x)
    sp, sp_map = _spatial_reference(mod.spatial, x)
    sl = _slice_reference(mod.slice, x)
    torch.testing.assert_close(y, (sp - x) + (sl - x) + x)
    torch.testing.assert_close(maps["spatial"], sp_map)


def test_guidance_loss_weights_each_term_by_hand():
    """CE = log 2, KL term 0.443776 (T = 2, see test_losses), alignment 0.4: each weight
    scales its own term."""
    zp, fp = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    zs = {"t1": torch.tensor([[0.0, 0.0]]), "flair": torch.tensor([[0.0, 0.0]])}
    fs = {"t1": torch.tensor([[3.0, 4.0]]), "flair": torch.tensor([[1.0, 0.0]])}
    out = guidance_loss(
        zp, fp, zs, fs, torch.tensor([1]), temperature=2.0, kd_weight=0.25,
        feature_weight=3.0, ce_weight=0.5,
    )  # fmt: skip
    expected = 0.5 * math.log(2.0) + 0.25 * 0.443776 + 3.0 * 0.4
    assert out["loss"].item() == pytest.approx(expected, abs=1e-5)
    assert (out["ce"].item(), out["kd"].item(), out["fa"].item()) == pytest.approx(
        (math.log(2.0), 0.443776, 0.4), abs=1e-5
    )


@pytest.mark.parametrize("cls", [SpatialAttention, SliceAttention])
def test_query_and_key_width_is_channels_over_reduction(cls):
    mod = cls(16, reduction=8)
    q = mod.query.out_channels if cls is SpatialAttention else mod.query.out_features
    k = mod.key.out_channels if cls is SpatialAttention else mod.key.out_features
    assert (q, k) == (2, 2)
    assert sum(p.numel() for p in cls(16, reduction=16).query.parameters()) == 16 + 1
