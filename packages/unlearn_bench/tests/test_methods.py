"""Every registered method: a finite loss with gradients on the tiny model, a step that lowers it
(medai_testkit.MethodStepContract), all generated from the registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medai_testkit import MethodProbe, MethodStepContract
from medcommon.errors import InputError
from medcommon.train import seed_everything
from unlearn_bench.config import TinyModelConfig
from unlearn_bench.data import Encoder, check_dataset, collate, corpus_texts, idk_answer
from unlearn_bench.losses import nll
from unlearn_bench.methods import METHODS, Forwards, forward
from unlearn_bench.model import build_tiny

PAPER_FIVE = {"ga", "grad_diff", "kl_min", "npo", "idk"}


def test_registry_holds_the_seven_methods():
    assert set(METHODS.names()) == PAPER_FIVE | {"simnpo", "rmu"}
    with pytest.raises(InputError, match="unknown method 'foo'; choose from ga"):
        METHODS.get("foo")


def test_every_method_has_its_own_one_line_description():
    texts = {name: METHODS.describe(name) for name in METHODS.names()}
    for name, text in texts.items():
        assert text and "\n" not in text, name
        assert METHODS.get(name).__dict__.get("description") == text, f"{name} inherits it"
    assert len(set(texts.values())) == len(texts)  # no two methods share one
    assert f"npo: {texts['npo']}" in METHODS.help()


@pytest.fixture(scope="module")
def setup(tiny_data):
    seed_everything(0)
    data = check_dataset(tiny_data)
    model, processor = build_tiny(TinyModelConfig(), corpus_texts(data))
    enc = Encoder(processor, tiny_data)
    return model, enc, data


def _method_and_batch(name, setup, mode):
    """A fresh copy of the tiny model (in ``mode``), method ``name`` on it, and its batch."""
    import copy

    model, enc, data = setup
    model = copy.deepcopy(model).train(mode == "train")
    cls = METHODS.get(name)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if cls.needs_reference else None
    method = cls(cls.preset_config("tiny"), ref=ref, seed=0)
    method.setup(model)
    pad = enc.tokenizer.pad_token_id
    forget = collate([enc.encode(it, method.forget_answer(it)) for it in data["forget"][:4]], pad)
    retain = collate([enc.encode(it) for it in data["retain"][:4]], pad)
    batch = {"forget": forget, "retain": retain} if cls.uses_retain else forget
    return model, method, forget, batch


@pytest.mark.parametrize("name", METHODS.names())
def test_method_loss_is_finite_and_trains(name, setup):
    model, method, forget, batch = _method_and_batch(name, setup, "train")
    out = method.loss(model, batch, None)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in model.model.language_model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    if name == "ga":  # GA is exactly the negated answer NLL
        with torch.no_grad():
            assert out["loss"].item() == pytest.approx(
                -nll(forward(model, forget).logits, forget["labels"]).item(), rel=1e-5
            )
    if name in ("npo", "kl_min"):  # the model equals its reference: log-ratio and KL are 0
        key = "log_ratio" if name == "npo" else "retain_kl"
        assert abs(float(out[key].detach())) < 1e-4


@pytest.mark.parametrize("name", METHODS.names())
def test_forwards_wrapper_gives_the_same_loss_and_gradient(name, setup):
    """The unlearn command trains ``Forwards(llava)`` (one call per step, for DDP): same numbers."""
    model, method, _, batch = _method_and_batch(name, setup, "train")
    plain = method.loss(model, batch, None)["loss"]
    plain.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    wrapped = method.loss(Forwards(model), batch, None)["loss"]
    wrapped.backward()
    assert torch.equal(plain, wrapped)
    again = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == again.keys()
    assert all(torch.equal(grads[n], again[n]) for n in grads)


class TestMethodSteps(MethodStepContract):
    """One training step (AdamW at the method's tiny-preset lr, as ``unlearn`` trains) on a
    fixed forget (+ retain) batch lowers the method's objective; seeded steps are identical.

    Eval mode (no dropout): the loss is a deterministic function of the weights.
    """

    methods = METHODS.names()

    @pytest.fixture(autouse=True)
    def _setup(self, setup):
        self.setup = setup

    def make_probe(self, method, seed):
        torch.manual_seed(seed)
        model, step_method, _, batch = _method_and_batch(method, self.setup, "eval")
        opt = torch.optim.AdamW(model.parameters(), lr=step_method.cfg.lr, weight_decay=0.0)

        def loss() -> float:
            with torch.no_grad():
                return float(step_method.loss(model, batch, None)["loss"])

        def step() -> None:
            opt.zero_grad()
            step_method.loss(model, batch, None)["loss"].backward()
            opt.step()

        return MethodProbe(loss=loss, step=step, state=model.state_dict)


# the component that must move with the total (GA: the forget NLL must rise)
_COMPONENT = {"ga": ("forget_nll", +1), "idk": ("idk_nll", -1), "rmu": ("rmu_forget", -1)}


@pytest.mark.parametrize("name", sorted(_COMPONENT))
def test_the_method_specific_component_moves(name, setup):
    model, method, _, batch = _method_and_batch(name, setup, "eval")

    def parts():
        with torch.no_grad():
            return {k: float(v) for k, v in method.loss(model, batch, None).items()}

    before = parts()
    method.loss(model, batch, None)["loss"].backward()
    with torch.no_grad():  # one plain gradient step of (normalised) length 1e-3
        params = [p for p in model.parameters() if p.grad is not None]
        gnorm = torch.sqrt(sum((p.grad**2).sum() for p in params))
        for p in params:
            p -= 1e-3 * p.grad / gnorm
    key, sign = _COMPONENT[name]
    assert sign * (parts()[key] - before[key]) > 0, (key, before[key])


def test_idk_targets_idk_answers(setup):
    _, enc, data = setup
    item = data["forget"][0]
    method = METHODS.get("idk")(METHODS.get("idk").preset_config("tiny"))
    ans = method.forget_answer(item)
    assert ans == idk_answer(item["id"])
    encoded = enc.encode(item, ans)
    answer_ids = encoded["labels"][encoded["labels"] != -100].tolist()
    assert enc.tokenizer.decode(answer_ids, skip_special_tokens=True).strip() == ans


def test_paper_defaults():
    assert METHODS.get("npo").config_class().beta == 0.1
    cfg = METHODS.get("ga").config_class()
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (2e-5, 1.0, 4)


# ------------------------------------------------------------------------------------------
# Wiring: each method's loss against an independent computation from torch's own
# cross_entropy / kl_div / softplus on the model's logits, with a reference model that
# differs from the trained one and non-default weights, so that a sign flip, a swapped
# theta/ref, a reversed KL or a dropped term changes the number.
# ------------------------------------------------------------------------------------------
def _ce_nll(logits, labels):
    v = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, v).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def _ce_seq_logprob(logits, labels):
    b, t, v = logits.shape
    tok = F.cross_entropy(
        logits[:, :-1].reshape(-1, v).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(b, t - 1)
    return -tok.sum(-1), (labels[:, 1:] != -100).sum(-1)


def _kl_div_ref_theta(logits_ref, logits, labels):
    """KL(p_ref || p_theta) via torch's kl_div (input = log p_theta, target = log p_ref)."""
    per_tok = F.kl_div(
        torch.log_softmax(logits[:, :-1].float(), -1),
        torch.log_softmax(logits_ref[:, :-1].float(), -1),
        log_target=True,
        reduction="none",
    ).sum(-1)
    mask = labels[:, 1:] != -100
    return per_tok[mask].mean()


WIRING_CFG = {
    "grad_diff": {"gamma": 2.0, "alpha": 3.0},
    "kl_min": {"gamma": 2.0, "alpha": 3.0},
    "npo": {"beta": 0.3, "alpha": 3.0},
    "simnpo": {"beta": 0.7, "delta": 0.2, "alpha": 3.0},
    "idk": {"alpha": 3.0},
}


@pytest.fixture(scope="module")
def wiring(setup):
    """Model, a perturbed reference copy (so log-ratios and KL are far from 0), batches."""
    import copy

    model, enc, data = setup
    model = copy.deepcopy(model).eval()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    pad = enc.tokenizer.pad_token_id
    return model, ref, enc, data, pad


@pytest.mark.parametrize("name", sorted(WIRING_CFG))
@torch.no_grad()
def test_method_loss_equals_independent_formula(name, wiring):
    import dataclasses

    model, ref, enc, data, pad = wiring
    cls = METHODS.get(name)
    cfg = dataclasses.replace(cls.preset_config("tiny"), **WIRING_CFG[name])
    method = cls(cfg, ref=ref if cls.needs_reference else None, seed=0)
    method.setup(model)
    forget_items, retain_items = data["forget"][:4], data["retain"][3:7]
    f = collate([enc.encode(it, method.forget_answer(it)) for it in forget_items], pad)
    r = collate([enc.encode(it) for it in retain_items], pad)
    out = method.loss(model, {"forget": f, "retain": r}, None)

    lf, lr = forward(model, f).logits, forward(model, r).logits
    retain_nll = _ce_nll(lr, r["labels"])
    parts = {}  # each logged term on its own too: a small term must not hide in the total
    if name == "grad_diff":
        parts = {"forget_nll": _ce_nll(lf, f["labels"]), "retain_nll": retain_nll}
        want = -2.0 * parts["forget_nll"] + 3.0 * retain_nll
    elif name == "kl_min":
        kl = _kl_div_ref_theta(forward(ref, r).logits, lr, r["labels"])
        assert kl > 1e-3  # the reference differs: a reversed KL would give another number
        parts = {"forget_nll": _ce_nll(lf, f["labels"]), "retain_kl": kl}
        want = -2.0 * parts["forget_nll"] + 3.0 * kl
    elif name == "npo":
        lp, _ = _ce_seq_logprob(lf, f["labels"])
        lp_ref, _ = _ce_seq_logprob(forward(ref, f).logits, f["labels"])
        assert (lp - lp_ref).abs().min() > 1e-2
        # -log sigmoid(-beta (lp - lp_ref)) = softplus(beta (lp - lp_ref))
        npo = 2 / 0.3 * F.softplus(0.3 * (lp - lp_ref)).mean()
        parts = {"npo": npo, "retain_nll": retain_nll, "log_ratio": (lp - lp_ref).mean()}
        want = npo + 3.0 * retain_nll
    elif name == "simnpo":
        lp, n = _ce_seq_logprob(lf, f["labels"])
        simnpo = 2 / 0.7 * F.softplus(0.7 * lp / n + 0.2).mean()
        parts = {"simnpo": simnpo, "retain_nll": retain_nll}
        want = simnpo + 3.0 * retain_nll
    else:  # idk: the forget batch holds the IDK answers
        parts = {"idk_nll": _ce_nll(lf, f["labels"]), "retain_nll": retain_nll}
        want = parts["idk_nll"] + 3.0 * retain_nll
    assert out["loss"].item() == pytest.approx(float(want), rel=1e-5, abs=1e-6)
    for key, value in parts.items():
        assert out[key].item() == pytest.approx(float(value), rel=1e-5, abs=1e-6), key


@torch.no_grad()
def test_rmu_loss_equals_independent_formula(wiring):
    import dataclasses

    model, ref, enc, data, pad = wiring
    cls = METHODS.get("rmu")
    cfg = dataclasses.replace(cls.preset_config("tiny"), alpha=3.0, steering_coeff=5.0)
    method = cls(cfg, ref=ref, seed=0)
    method.setup(model)
    f = collate([enc.encode(it) for it in data["forget"][:3]], pad)
    r = collate([enc.encode(it) for it in data["retain"][:3]], pad)
    got = method.loss(model, {"forget": f, "retain": r}, None)["loss"].item()
    k = method.layer + 1  # hidden_states[0] is the embedding output
    h_f = model(**_inputs(f), output_hidden_states=True).hidden_states[k]
    h_r = model(**_inputs(r), output_hidden_states=True).hidden_states[k]
    h_ref = ref(**_inputs(r), output_hidden_states=True).hidden_states[k]
    fm, rm = f["attention_mask"].bool(), r["attention_mask"].bool()
    assert method.control.norm().item() == pytest.approx(5.0, rel=1e-5)
    target = method.control.expand_as(h_f[fm])
    want = F.mse_loss(h_f[fm], target) + 3.0 * F.mse_loss(h_r[rm], h_ref[rm])
    assert got == pytest.approx(float(want), rel=1e-4)


def _inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}


def test_rmu_steers_the_middle_layer_by_default(setup):
    model = setup[0]
    cls = METHODS.get("rmu")
    n = model.config.text_config.num_hidden_layers
    method = cls(cls.preset_config("tiny"))
    method.setup(model)
    assert cls.config_class().layer == -1 and method.layer == (n - 1) // 2  # 0 of 2 layers
    import dataclasses

    chosen = cls(dataclasses.replace(cls.preset_config("tiny"), layer=1))
    chosen.setup(model)
    assert chosen.layer == 1
