"""Each method's step function, and every registered method end to end on tiny data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from medcommon.train import seed_everything
from pbbl_cxr.config import ModelConfig, run_preset
from pbbl_cxr.data import DataOptions, load_split
from pbbl_cxr.losses import GroupDROWeights, LossEMA, gce_loss
from pbbl_cxr.methods import (
    METHODS,
    RunContext,
    erm_step,
    make_bbs_step,
    make_gce_step,
    make_groupdro_step,
    make_lff_step,
    run_method,
)
from pbbl_cxr.models import BiasedDebiasedPair, Classifier, build_model


def _batch():
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(6, 1, 24, 24, generator=g),
        "label": torch.tensor([0, 1, 1, 0, 1, 0]),
        "bias": torch.tensor([0, 1, 0, 1, 1, 0]),
        "bias_hat": torch.tensor([0, 1, 1, 1, 1, 0]),
        "index": torch.arange(6),
    }


def _model(seed=0):
    torch.manual_seed(seed)
    return Classifier(ModelConfig(width=4, image_size=24)).eval()


def test_erm_and_gce_steps():
    model, batch = _model(), _batch()
    logits = model(batch["image"])
    assert erm_step(model, batch, None).item() == pytest.approx(
        F.cross_entropy(logits, batch["label"]).item(), rel=1e-6
    )
    gce = make_gce_step(0.7, "bias_hat")(model, batch, None)
    assert gce.item() == pytest.approx(
        gce_loss(logits, batch["bias_hat"], 0.7).mean().item(), rel=1e-6
    )


def test_bbs_step_adds_log_prior_of_the_chosen_bias():
    model, batch = _model(), _batch()
    logits = model(batch["image"])
    lp = torch.log(torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    for key in ("bias", "bias_hat"):
        got = make_bbs_step(lp, key)(model, batch, SimpleNamespace())
        want = F.cross_entropy(logits + lp[batch[key]], batch["label"])
        assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_groupdro_step_upweights_the_worst_group():
    model, batch = _model(), _batch()
    ctx = SimpleNamespace(state={"dro": GroupDROWeights(4, eta=0.5)})
    out = make_groupdro_step(2)(model, batch, ctx)
    per = F.cross_entropy(model(batch["image"]), batch["label"], reduction="none")
    group = batch["label"] * 2 + batch["bias"]
    losses = torch.stack([per[group == g].mean() for g in range(4)])
    q = torch.softmax(0.5 * losses, 0)  # uniform start: q ∝ exp(eta * L_g)
    assert ctx.state["dro"].q.tolist() == pytest.approx(q.tolist(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((q * losses).sum().item(), rel=1e-5)
    assert out["q_max"].item() == pytest.approx(q.max().item(), rel=1e-5)  # the logged weight


def test_lff_step_weights_debiased_ce_by_relative_difficulty():
    pair = BiasedDebiasedPair(_model(0), _model(1))
    batch = _batch()
    labels_all = batch["label"]
    ctx = SimpleNamespace(state={"ema_b": LossEMA(6, 0.7), "ema_d": LossEMA(6, 0.7)})
    out = make_lff_step(0.7, labels_all)(pair, batch, ctx)
    zb, zd = pair.biased(batch["image"]), pair.debiased(batch["image"])
    ce_b = F.cross_entropy(zb, batch["label"], reduction="none")
    ce_d = F.cross_entropy(zd, batch["label"], reduction="none")

    # first update: ema = 0.3 * loss; normalising by the class maximum cancels the 0.3
    def norm(ce):
        m = torch.stack([ce[labels_all == c].max() for c in (0, 1)])
        return ce / m[batch["label"]]

    w = norm(ce_b) / (norm(ce_b) + norm(ce_d))
    want = gce_loss(zb, batch["label"], 0.7).mean() + (ce_d * w).mean()
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    assert out["lff_weight"].item() == pytest.approx(w.mean().item(), rel=1e-5)  # logged


@pytest.fixture(scope="module")
def tiny_splits(gbp_tiny: Path):
    opts = DataOptions(image_size=24)
    return load_split(gbp_tiny, "train", opts), load_split(gbp_tiny, "valid", opts)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_runs_two_steps(name: str, tiny_splits):
    train, valid = tiny_splits
    base = run_preset("tiny")
    cfg = base.__class__(**{**vars(base), "steps": 2, "bias_steps": 2, "eval_every": 1})
    out = run_method(name, RunContext(cfg, train, valid, seed=0))
    assert isinstance(out.model, Classifier)
    assert out.train_seconds > 0

    # training changed the weights: compare with the same seed's fresh initialisation
    # (LfF keeps f_D, the second network built after seeding)
    def fresh() -> Classifier:
        seed_everything(0)
        nets = [build_model(cfg.model) for _ in range(2 if name == "lff" else 1)]
        return nets[-1]

    init, again = fresh().state_dict(), fresh().state_dict()
    assert all(torch.equal(v, again[k]) for k, v in init.items())  # the init is reproducible
    trained = out.model.state_dict()
    assert trained.keys() == init.keys()
    trainable = [k for k, p in out.model.named_parameters() if p.requires_grad]
    assert trainable
    assert any(not torch.equal(trained[k], init[k]) for k in trainable)

    if name == "pbbl":
        b_hat = out.info["b_hat"]
        assert b_hat.shape == train.labels.shape
        assert set(b_hat.tolist()) <= {0, 1}
        assert out.info["pseudo_bias_accuracy"] == pytest.approx(
            (b_hat == train.bias).float().mean().item()
        )
        prior = torch.tensor(out.info["prior"])
        # each row: p(y | b_hat = b) from the counts of the pseudo labels the run used
        for b in (0, 1):
            ys = train.labels[b_hat == b]
            if len(ys):
                want = torch.bincount(ys, minlength=2).float() / len(ys)
            else:
                want = torch.full((2,), 0.5)
            if out.info["prior_check"]["response"] == "marginal":  # degenerate: p(y) rows
                want = torch.bincount(train.labels, minlength=2).float() / len(train.labels)
            assert torch.allclose(prior[b], want), (b, prior[b], want)
    if name != "gce":
        assert "auc_balanced" in out.valid_metrics
