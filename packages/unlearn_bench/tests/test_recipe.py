"""MLLMU-Bench's recipe as switches (issue #13, item 6), each against an independent computation.

- ``loss_tokens="full"``: every non-padding token counts (their finetune.py: labels =
  input_ids with the padding masked);
- ``npo_reference=<folder>``: NPO's log-ratio is taken against that model (their oracle);
- ``kl_retain_nll``: KL-Min's loss gains exactly ``w * NLL(retain)`` (their KL_Min.py);
- ``rmu_layer`` / ``rmu_params``: RMU steered layer and trained parameters chosen by name.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from medcommon.errors import InputError
from medcommon.train import seed_everything
from unlearn_bench.config import TinyModelConfig
from unlearn_bench.data import FILES, Encoder, check_dataset, collate, corpus_texts
from unlearn_bench.methods import METHODS, forward
from unlearn_bench.model import build_tiny, save_llava
from unlearn_bench.train import reference_model


@pytest.fixture(scope="module")
def tiny(tiny_data):
    seed_everything(0)
    data = check_dataset(tiny_data, FILES)
    model, processor = build_tiny(TinyModelConfig(), corpus_texts(data))
    return model.eval(), processor, Encoder(processor, tiny_data), data


def _perturbed(model, seed=1, scale=0.2):
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return other.eval()


def _inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}


@torch.no_grad()
def test_full_sequence_loss_is_the_mean_over_every_non_pad_token(tiny):
    model, _, enc, data = tiny
    items = data["forget_train"][:3] + data["retain_train"][:2]  # text and image prompts
    pad = enc.tokenizer.pad_token_id
    full = collate([enc.encode(it, loss_tokens="full") for it in items], pad)
    answer = collate([enc.encode(it) for it in items], pad)
    assert torch.equal(full["input_ids"], answer["input_ids"])
    # by hand: next-token cross-entropy at every position whose target is a real token
    logits = model(**_inputs(full)).logits[:, :-1]
    target, keep = full["input_ids"][:, 1:], full["attention_mask"][:, 1:].bool()
    want = F.cross_entropy(logits[keep], target[keep])
    cls = METHODS.get("ga")
    cfg = dataclasses.replace(cls.preset_config("tiny"), loss_tokens="full")
    got = cls(cfg).loss(model, full, None)["forget_nll"]
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # and it is not the answer-only loss: the prompt tokens really count
    n_full = (full["labels"][:, 1:] != -100).sum()  # the targets (shifted by one)
    n_answer = (answer["labels"][:, 1:] != -100).sum()
    assert n_full == keep.sum() > 2 * n_answer
    ans = cls(cls.preset_config("tiny")).loss(model, answer, None)["forget_nll"]
    assert abs(ans.item() - got.item()) > 1e-3


def test_loss_tokens_is_a_config_switch():
    from medcommon.config import resolve_config
    from unlearn_bench.config import FinetuneConfig, finetune_preset

    def method_config(name, overrides):  # what unlearn resolves: the preset <- --set
        cls = METHODS.get(name)
        return resolve_config(cls.config_class, base=cls.preset_config("tiny"), overrides=overrides)

    assert finetune_preset("full").loss_tokens == "answer"  # the default is unchanged
    cfg = resolve_config(
        FinetuneConfig, base=finetune_preset("tiny"), overrides=["loss_tokens=full"]
    )
    assert cfg.loss_tokens == "full"
    assert method_config("npo", ["loss_tokens=full"]).loss_tokens == "full"
    with pytest.raises(InputError, match="loss_tokens"):
        method_config("ga", ["loss_tokens=prompt"])


@torch.no_grad()
def test_npo_with_a_reference_folder_uses_that_models_logprobs(tiny, tmp_path):
    model, processor, enc, data = tiny
    oracle = _perturbed(model)
    save_llava(oracle, processor, tmp_path / "oracle")
    ref = reference_model(model, str(tmp_path / "oracle"), "float32")
    pad = enc.tokenizer.pad_token_id
    f = collate([enc.encode(it) for it in data["forget_train"][:4]], pad)
    r = collate([enc.encode(it) for it in data["retain_train"][:4]], pad)
    cls = METHODS.get("npo")
    cfg = dataclasses.replace(
        cls.preset_config("tiny"), beta=0.5, alpha=0.0, npo_reference=str(tmp_path / "oracle")
    )
    got = cls(cfg, ref=ref).loss(model, {"forget": f, "retain": r}, None)["npo"]

    def seq_lp(m):  # summed answer log-probability per sample, by hand
        lp = torch.log_softmax(m(**_inputs(f)).logits[:, :-1], -1)
        lab = f["labels"][:, 1:]
        tok = lp.gather(-1, lab.clamp(min=0)[..., None])[..., 0]
        return (tok * (lab != -100)).sum(-1)

    want = 2 / 0.5 * F.softplus(0.5 * (seq_lp(model) - seq_lp(oracle))).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    vanilla = cls(cfg, ref=reference_model(model, "vanilla", "float32"))
    assert vanilla.loss(model, {"forget": f, "retain": r}, None)["npo"].item() == pytest.approx(
        2 / 0.5 * F.softplus(torch.zeros(())).item(), rel=1e-6
    )  # against itself the log-ratio is 0
    # a reference with another vocabulary cannot be compared token by token
    other, other_proc = build_tiny(TinyModelConfig(vocab_size=300), ["a b c d"])
    save_llava(other, other_proc, tmp_path / "alien")
    with pytest.raises(InputError, match="npo_reference"):
        reference_model(model, str(tmp_path / "alien"), "float32")


@torch.no_grad()
def test_kl_min_retain_nll_adds_exactly_that_term(tiny):
    model, _, enc, data = tiny
    ref = _perturbed(model)
    pad = enc.tokenizer.pad_token_id
    f = collate([enc.encode(it) for it in data["forget_train"][:4]], pad)
    r = collate([enc.encode(it) for it in data["retain_train"][:4]], pad)
    cls = METHODS.get("kl_min")
    base = cls.preset_config("tiny")
    plain = cls(base, ref=ref).loss(model, {"forget": f, "retain": r}, None)
    assert base.kl_retain_nll == 0.0 and "retain_nll" not in plain
    cfg = dataclasses.replace(base, kl_retain_nll=0.7)
    out = cls(cfg, ref=ref).loss(model, {"forget": f, "retain": r}, None)
    logits = forward(model, r).logits[:, :-1]
    lab = r["labels"][:, 1:]
    nll = F.cross_entropy(logits[lab != -100], lab[lab != -100])
    assert out["retain_nll"].item() == pytest.approx(nll.item(), rel=1e-5)
    diff = out["loss"].item() - plain["loss"].item()
    assert diff == pytest.approx(0.7 * nll.item(), rel=1e-4)


def test_rmu_trains_only_the_named_parameters_at_the_named_layer(tiny):
    model, _, enc, data = tiny
    model = copy.deepcopy(model).train()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    cls = METHODS.get("rmu")
    cfg = dataclasses.replace(
        cls.preset_config("tiny"),
        rmu_layer="*language_model.layers.0",
        rmu_params=(
            "*language_model.layers.0.mlp.*",
            "*language_model.layers.1.self_attn.q_proj.weight",
        ),
    )
    assert cfg.layer == -1  # the index default; the name below decides
    method = cls(cfg, ref=ref, seed=0)
    method.setup(model)
    assert method.layer == 0
    named = {n for n, p in model.named_parameters() if p.requires_grad}
    assert named == set(method.trained) and len(named) == 4  # gate, up, down, one q_proj
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    pad = enc.tokenizer.pad_token_id
    f = collate([enc.encode(it) for it in data["forget_train"][:4]], pad)
    r = collate([enc.encode(it) for it in data["retain_train"][:4]], pad)
    for _ in range(2):
        opt.zero_grad()
        method.loss(model, {"forget": f, "retain": r}, None)["loss"].backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # the q_proj of layer 1 sits above the steered layer: no gradient, so it stays
    assert changed == named - {"model.language_model.layers.1.self_attn.q_proj.weight"}
    # a name that picks layer 1 steers layer 1's output
    cfg1 = dataclasses.replace(cls.preset_config("tiny"), rmu_layer="*.layers.1")
    m1 = cls(cfg1, ref=ref, seed=0)
    m1.setup(copy.deepcopy(ref))
    assert m1.layer == 1
    with pytest.raises(InputError, match="matches 2 decoder layers"):
        cls(dataclasses.replace(cfg1, rmu_layer="*layers.*"), ref=ref).setup(copy.deepcopy(ref))
    with pytest.raises(InputError, match="match no trainable parameter"):
        cls(dataclasses.replace(cfg1, rmu_params=("nothing*",)), ref=ref).setup(copy.deepcopy(ref))


def test_unlearn_loads_the_npo_reference_folder(tmp_path, tiny_data, tiny_run, capsys):
    """The command reads ``npo_reference``: a folder of another vocabulary is refused."""
    from medcommon.cli import run_main
    from unlearn_bench.cli import main

    other, proc = build_tiny(TinyModelConfig(vocab_size=300), ["a b c d"])
    save_llava(other, proc, tmp_path / "alien")
    argv = ["unlearn", "--model", tiny_run, "--data", tiny_data, "--out", tmp_path / "npo",
            "--method", "npo", "--quiet", "--device", "cpu",
            "--set", f"npo_reference={tmp_path / 'alien'}"]  # fmt: skip
    assert run_main(main, [str(a) for a in argv]) == 2
    assert "error: npo_reference: " in capsys.readouterr().err
    assert not (tmp_path / "npo").exists()
    argv[-1] = f"npo_reference={tiny_run}"  # a run folder of the same vocabulary works
    assert run_main(main, [str(a) for a in argv]) == 0
    assert (tmp_path / "npo" / "model" / "model.safetensors").is_file()
