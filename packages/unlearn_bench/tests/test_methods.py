"""Every registered method: a finite loss with gradients on the tiny model, a step that lowers it
(medcommon.testing.MethodStepContract), all generated from the registry."""

from __future__ import annotations

import pytest
import torch

from medcommon.errors import InputError
from medcommon.testing import MethodProbe, MethodStepContract
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
