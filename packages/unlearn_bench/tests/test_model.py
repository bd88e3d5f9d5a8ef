"""The tiny Llava: medcommon's model conformance checks, save/load round trip, KV-cache generation, checkpoint validation."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from medai_testkit import ModelConformance
from medcommon.errors import InputError
from medcommon.train import seed_everything
from unlearn_bench.config import TinyModelConfig
from unlearn_bench.data import Encoder, check_dataset, collate, corpus_texts, format_prompt
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


def _corpus() -> list[str]:
    """A fixed corpus for the tokenizer of the conformance model (no dataset needed)."""
    data = {
        "train": [
            {"question": f"What is the diagnosis of patient {i}?", "answer": f"Condition {i % 3}."}
            for i in range(6)
        ]
    }
    return corpus_texts(data)


@functools.lru_cache(maxsize=1)
def _processor():
    """The processor :func:`build_tiny` makes for :func:`_corpus` (deterministic, built once)."""
    return build_tiny(TinyModelConfig(), _corpus())[1]


def _architecture(config) -> dict:
    """A Hugging Face config as a dict without the fields loading fills in (path, dtype, ...)."""
    bookkeeping = {"_name_or_path", "dtype", "torch_dtype", "architectures", "transformers_version"}

    def strip(d):
        return {
            k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if k not in bookkeeping
        }

    return strip(config.to_dict())


class TestTinyLlavaConformance(ModelConformance):
    """medcommon's model checks on the tiny Llava; save/load is the package's own (HF folders)."""

    def make_model(self):
        return build_tiny(TinyModelConfig(), _corpus())[0]

    def make_input(self):
        """Two prompts with one 32x32 image each, right-padded: ``input_ids`` (2, T), pixels (2, 3, 32, 32)."""
        from PIL import Image

        gen = torch.Generator().manual_seed(1)
        images = [
            Image.fromarray(
                torch.randint(0, 256, (32, 32, 3), generator=gen, dtype=torch.uint8).numpy()
            )
            for _ in range(2)
        ]
        texts = [
            format_prompt("What is the diagnosis of patient 1?", True) + " Condition 1.",
            format_prompt("Diagnosis?", True) + " Condition 2.",
        ]
        enc = _processor()(text=texts, images=images, return_tensors="pt", padding=True)
        assert enc["attention_mask"].min() == 0  # the padding path is exercised
        return dict(enc)

    def forward(self, model, inputs):
        return model(**inputs, use_cache=False)

    def model_config(self, model):
        return model.config

    def test_every_parameter_gets_a_gradient(self):
        """Every parameter but CLIP's ``post_layernorm``: LLaVA reads the vision encoder's
        last hidden state, and only CLIP's pooled output (unused) passes that norm."""
        model = self._build().train()
        torch.manual_seed(self.seed)
        out = self.forward(model, self.make_input())
        out.logits.square().mean().backward()  # the image features reach it via the image tokens
        missing = {n for n, p in model.named_parameters() if p.grad is None}
        assert missing == {
            "model.vision_tower.post_layernorm.weight",
            "model.vision_tower.post_layernorm.bias",
        }
        for n, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), n

    def test_save_load_round_trip(self, tmp_path):
        """:func:`save_llava` / :func:`load_llava` replace medcommon's ``save_pretrained`` (HF folder)."""
        model = self._build().eval()
        save_llava(model, _processor(), tmp_path / "m")
        assert (tmp_path / "m" / "model.safetensors").is_file()
        assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llava"
        loaded, processor = load_llava(tmp_path / "m")
        inputs = self.make_input()
        text = format_prompt("What is the diagnosis of patient 1?", True)
        ids = _processor().tokenizer(text)["input_ids"]
        assert processor.tokenizer(text)["input_ids"] == ids
        with torch.no_grad():
            a, b = self.forward(model, inputs), self.forward(loaded.eval(), inputs)
        assert torch.equal(a.logits, b.logits), "outputs differ after save/load"
        assert _architecture(loaded.config) == _architecture(model.config), "config changed"


def test_reloaded_processor_encodes_like_the_original(built, tiny_data, tmp_path):
    model, processor, data = built
    save_llava(model, processor, tmp_path / "m")
    _, proc2 = load_llava(tmp_path / "m")
    items = data["forget"][:6]
    b1 = collate([Encoder(processor, tiny_data).encode(it) for it in items], 0)
    b2 = collate([Encoder(proc2, tiny_data).encode(it) for it in items], 0)
    assert torch.equal(b1["input_ids"], b2["input_ids"])
    assert b1["pixel_values"] is not None and torch.allclose(b1["pixel_values"], b2["pixel_values"])


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
