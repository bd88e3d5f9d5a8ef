"""The tiny Llava: save_pretrained round trip, KV-cache generation, checkpoint validation."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from medcommon.errors import InputError
from medcommon.train import seed_everything
from unlearn_bench.config import TinyModelConfig
from unlearn_bench.data import Encoder, check_dataset, collate, corpus_texts
from unlearn_bench.evaluate import generate_answers
from unlearn_bench.model import build_tiny, load_llava, save_llava


@pytest.fixture(scope="module")
def built(tiny_data):
    seed_everything(0)
    data = check_dataset(tiny_data)
    model, processor = build_tiny(TinyModelConfig(), corpus_texts(data))
    return model.eval(), processor, data


def test_is_a_real_llava_with_image_token(built):
    model, processor, _ = built
    assert isinstance(model, LlavaForConditionalGeneration)
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == model.config.image_token_id
    assert len(tok) <= 500 and model.config.text_config.hidden_size == 64
    assert sum(p.numel() for p in model.parameters()) < 500_000


def test_save_pretrained_round_trip(built, tiny_data, tmp_path):
    model, processor, data = built
    save_llava(model, processor, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llava"
    loaded, proc2 = load_llava(tmp_path / "m")
    items = data["forget"][:6]
    b1 = collate([Encoder(processor, tiny_data).encode(it) for it in items], 0)
    b2 = collate([Encoder(proc2, tiny_data).encode(it) for it in items], 0)
    assert torch.equal(b1["input_ids"], b2["input_ids"])
    assert b1["pixel_values"] is not None and torch.allclose(b1["pixel_values"], b2["pixel_values"])
    with torch.no_grad():
        kw = {k: b1[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        assert torch.allclose(model(**kw).logits, loaded.eval()(**kw).logits, atol=1e-6)


def test_image_tokens_are_expanded_to_the_patch_count(built, tiny_data):
    _, processor, data = built
    item = next(it for it in data["forget"] if it["modality"] == "image_text")
    ids, pixels = Encoder(processor, tiny_data).prompt(item)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == (32 // 8) ** 2
    assert pixels.shape == (1, 3, 32, 32)


def test_kv_cache_generation_equals_naive_greedy(built, tiny_data):
    model, processor, data = built
    enc = Encoder(processor, tiny_data)
    items = data["forget"][:5]  # mixed image+text and text-only, different lengths
    fast = generate_answers(model, enc, items, max_new_tokens=6, batch_size=5)
    tok = processor.tokenizer
    for item, got in zip(items, fast):
        ids, pix = enc.prompt(item)
        ids = torch.tensor([ids])
        new = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(
                    model(input_ids=ids, pixel_values=pix, use_cache=False).logits[0, -1].argmax()
                )
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        assert got == tok.decode(new, skip_special_tokens=True).strip()


def test_not_a_llava_folder(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(InputError, match="not a Llava checkpoint"):
        load_llava(tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        load_llava(tmp_path / "empty")
