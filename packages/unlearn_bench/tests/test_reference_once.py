"""Issue #24 item 4: NPO's reference enters only through log p_ref(y|x) of each forget
item, which is fixed, so it is computed once before training and no reference model is
held while training (``reference_logprobs="once"``, the default). Checked against the
independent formula, against a run that holds the reference (``"model"``), and by
making sure no reference model is built."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from medcommon.train import seed_everything
from unlearn_bench import train as train_module
from unlearn_bench.cli import main
from unlearn_bench.config import TinyModelConfig
from unlearn_bench.data import Encoder, check_dataset, collate, corpus_texts
from unlearn_bench.methods import METHODS, forward
from unlearn_bench.model import build_tiny
from unlearn_bench.train import attach_reference_logprobs


def _seq_logprob(logits, labels):
    b, t, v = logits.shape
    tok = F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), labels[:, 1:].reshape(-1),
                          ignore_index=-100, reduction="none").view(b, t - 1)  # fmt: skip
    return -tok.sum(-1)


@pytest.fixture(scope="module")
def tiny(tiny_data):
    seed_everything(0)
    data = check_dataset(tiny_data)
    model, processor = build_tiny(TinyModelConfig(), corpus_texts(data))
    return model.eval(), Encoder(processor, tiny_data), data, processor.tokenizer.pad_token_id


@torch.no_grad()
def test_precomputed_reference_gives_npos_formula_without_a_reference_model(tiny):
    model, enc, data, pad = tiny
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    for p in ref.parameters():  # a reference far from the policy: log-ratios not ~0
        p.add_(0.2 * torch.randn(p.shape, generator=gen))
    cls = METHODS.get("npo")
    cfg = dataclasses.replace(cls.preset_config("tiny"), beta=0.3, alpha=0.0)
    method = cls(cfg, ref=None, seed=0)  # nothing held
    assert not method.holds_reference() and cls.needs_reference
    items = [enc.encode(it, method.forget_answer(it)) for it in data["forget"][:6]]
    attach_reference_logprobs(items, ref, pad, batch_size=4, device="cpu", dtype="float32")
    f = collate(items[:4], pad)
    lp_ref = _seq_logprob(forward(ref, f).logits, f["labels"])
    torch.testing.assert_close(f["ref_logprob"].float(), lp_ref, rtol=1e-5, atol=1e-4)
    r = collate([enc.encode(it) for it in data["retain"][:4]], pad)
    out = method.loss(model, {"forget": f, "retain": r}, None)
    lp = _seq_logprob(forward(model, f).logits, f["labels"])
    assert (lp - lp_ref).abs().min() > 1e-2
    want = 2 / 0.3 * F.softplus(0.3 * (lp - lp_ref)).mean()
    assert out["loss"].item() == pytest.approx(float(want), rel=1e-5)
    held = cls(dataclasses.replace(cfg, reference_logprobs="model"), ref=ref, seed=0)
    assert held.holds_reference()
    no_ref = {k: v for k, v in f.items() if k != "ref_logprob"}
    assert held.loss(model, {"forget": no_ref, "retain": r}, None)["loss"].item() == pytest.approx(
        out["loss"].item(), rel=1e-5
    )


def _npo(tiny_run, tiny_data, out, *extra):
    return main(["unlearn", "--model", str(tiny_run), "--data", str(tiny_data), "--out",
                 str(out), "--method", "npo", "--device", "cpu", "--quiet", *extra])  # fmt: skip


@pytest.mark.parametrize("lora", [[], ["--lora"]], ids=["full", "lora"])
def test_once_builds_no_reference_and_matches_a_run_that_holds_it(
    lora, tiny_run, tiny_data, tmp_path, monkeypatch
):
    """The same weights up to float rounding (each item's reference log-probability is
    computed in its own batch of the one pass, not in the training step's batch), and the
    same logged losses; ``once`` never builds a reference model."""
    held = tmp_path / "held"
    assert _npo(tiny_run, tiny_data, held, "--set", "reference_logprobs=model", *lora) == 0

    def no_copy(*args, **kwargs):
        raise AssertionError("a reference model was built")

    monkeypatch.setattr(train_module, "reference_model", no_copy)
    once = tmp_path / "once"
    assert _npo(tiny_run, tiny_data, once, *lora) == 0  # LoRA: dropout 0.05, off in the pass
    a = load_file(str(held / "model" / "model.safetensors"))
    b = load_file(str(once / "model" / "model.safetensors"))
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-4, worst
    assert any(not torch.equal(a[k], v) for k, v in
               load_file(str(tiny_run / "model" / "model.safetensors")).items())  # fmt: skip
    ma = json.loads((held / "metrics.json").read_text())
    mb = json.loads((once / "metrics.json").read_text())
    assert (ma["reference"], mb["reference"]) == ("model held", "log-probabilities computed once")
    la = [json.loads(x) for x in (held / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (once / "log.jsonl").read_text().splitlines()]
    npo_a = [r["npo"] for r in la if "npo" in r]
    npo_b = [r["npo"] for r in lb if "npo" in r]
    assert npo_a and npo_b == pytest.approx(npo_a, rel=1e-4, abs=1e-6)


def test_an_oracle_reference_is_loaded_once_and_freed(tiny_run, tiny_data, tmp_path):
    """MLLMU-Bench's NPO: the reference is another model (here the vanilla folder itself,
    so the log-ratio starts at 0 as with ``vanilla``). ``once`` loads it for one pass and
    gives the run of ``model``, which holds it."""
    oracle = ["--set", f"npo_reference={tiny_run}"]
    held, once = tmp_path / "held", tmp_path / "once"
    assert _npo(tiny_run, tiny_data, held, *oracle, "--set", "reference_logprobs=model") == 0
    assert _npo(tiny_run, tiny_data, once, *oracle) == 0
    a = load_file(str(held / "model" / "model.safetensors"))
    b = load_file(str(once / "model" / "model.safetensors"))
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-4


@pytest.mark.parametrize(
    ("method", "extra"),
    [("kl_min", []), ("npo", ["--set", "reference_logprobs=model"]),
     ("npo", ["--set", "npo_reference=ORACLE"])],
)  # fmt: skip
def test_fsdp_refuses_a_reference_model_that_only_rank_0_would_load(
    method, extra, tiny_run, tiny_data, tmp_path, monkeypatch, capsys
):
    """Under ``accelerate launch`` with FSDP (``ACCELERATE_USE_FSDP``), ranks > 0 load no
    weights before sharding, so a held reference (KL-min, RMU, NPO's ``model``) or an
    oracle folder would be empty there: exit 2 before anything is loaded."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    extra = [e.replace("ORACLE", str(tiny_run)) for e in extra]
    out = tmp_path / "fsdp"
    argv = ["unlearn", "--model", str(tiny_run), "--data", str(tiny_data), "--out", str(out),
            "--method", method, "--device", "cpu", "--quiet", *extra]  # fmt: skip
    from medcommon.cli.runner import run_main

    assert run_main(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "under FSDP" in err[0] and "reference_logprobs=once" in err[0]
    assert not out.exists() or not any(out.iterdir())
