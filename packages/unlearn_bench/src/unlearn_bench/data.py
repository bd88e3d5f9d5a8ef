"""Reading a dataset folder, the prompt format, and tokenised batches.

Prompt (MLLMU-Bench / LLaVA-1.5)::

    USER: <image>\\n{question}\\nASSISTANT: {answer}</s>      (image+text)
    USER: {question}\\nASSISTANT: {answer}</s>                (text-only)

By default the loss is taken on the answer tokens (and the end-of-sequence token)
only; ``loss_tokens="full"`` (:meth:`Encoder.encode`) labels every token of the prompt
and answer, as MLLMU-Bench's fine-tuning does (its collate copies ``input_ids`` into
``labels`` and masks only the padding).

Training reads ``forget_train`` / ``retain_train`` (the QA pairs), evaluation the
probes ``forget`` / ``retain`` / ``test`` / ``general`` (see :mod:`unlearn_bench.synth`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcommon.data import read_jsonl
from medcommon.errors import InputError
from unlearn_bench.synth import EXTRA_SPLITS, QTYPES, SPLITS, TRAIN_SPLITS

FILES = (*SPLITS, *TRAIN_SPLITS)  # every question file of a dataset folder
OPTIONAL_FILES = EXTRA_SPLITS  # written by generate with validation_probes (issue #23)

REQUIRED = ("id", "type", "modality", "question", "answer")
# The type of every field a question row may hold (synth's README lists them): required
# fields must be strings, optional ones strings or null; options a list of strings.
NULLABLE = ("image", "entity", "field", "true_answer")
MODALITIES = ("image_text", "text_only")
LOSS_TOKENS = ("answer", "full")  # which tokens the training losses count
IDK_ANSWERS = (
    "I don't know.",
    "I am not sure about that.",
    "I cannot answer that.",
    "That is not something I know.",
)


def read_split(data_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """Items of ``DATA/<split>.jsonl``, validated; errors name the file and line."""
    data_dir = Path(data_dir)
    if split not in (*FILES, *OPTIONAL_FILES):
        raise InputError("--split", f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    path = data_dir / f"{split}.jsonl"
    if not data_dir.is_dir():
        raise InputError(data_dir, "dataset folder not found")
    if not path.is_file():
        hint = (
            "an older folder without separate training QA: run generate again"
            if split in TRAIN_SPLITS
            else "is this a folder written by generate?"
        )
        raise InputError(path, f"split file not found ({hint})")
    items = []
    for item in read_jsonl(path, line_numbers=True):
        where = f"{path}:{item.pop('_line')}"
        missing = [k for k in REQUIRED if k not in item]
        if missing:
            raise InputError(where, f"missing field(s) {', '.join(missing)}")
        check_types(item, where)
        if item["type"] not in QTYPES:
            raise InputError(where, f"type {item['type']!r} is not one of {', '.join(QTYPES)}")
        if item["modality"] not in MODALITIES:
            raise InputError(
                where, f"modality {item['modality']!r} is not one of {', '.join(MODALITIES)}"
            )
        image = item.get("image")
        if item["modality"] == "image_text":
            if not image:
                raise InputError(where, "an image_text question needs an image")
            if not (data_dir / image).is_file():
                raise InputError(where, f"image not found: {data_dir / image}")
        item.setdefault("answer_text", item["answer"])
        items.append(item)
    if not items:
        raise InputError(path, "no questions in this split")
    return items


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def check_types(item: dict[str, Any], where: str) -> None:
    """Refuse a field of the wrong type (``"answer": 42``, ``"question": null``), naming it:
    nothing is converted silently."""
    for key in (*REQUIRED, "answer_text"):
        if key in item and not isinstance(item[key], str):
            raise InputError(where, f"field {key!r} must be a string, got {_shown(item[key])}")
    for key in NULLABLE:
        if item.get(key) is not None and not isinstance(item[key], str):
            raise InputError(
                where, f"field {key!r} must be a string or null, got {_shown(item[key])}"
            )
    options = item.get("options")
    if options is not None and not (
        isinstance(options, list) and all(isinstance(o, str) for o in options)
    ):
        raise InputError(where, f"field 'options' must be a list of strings, got {_shown(options)}")


def present_files(data_dir: str | Path) -> tuple[str, ...]:
    """:data:`FILES` and those of :data:`OPTIONAL_FILES` that ``data_dir`` holds."""
    extra = tuple(s for s in OPTIONAL_FILES if (Path(data_dir) / f"{s}.jsonl").is_file())
    return (*FILES, *extra)


def check_dataset(data_dir: str | Path, splits: Sequence[str] = SPLITS) -> dict[str, list]:
    """Read (and so validate) every named split; call before creating any output."""
    return {s: read_split(data_dir, s) for s in splits}


def corpus_texts(data: dict[str, list[dict]]) -> list[str]:
    """All prompt and answer text of a dataset, for training the BPE tokenizer."""
    texts = ["USER: ", "\nASSISTANT: ", *IDK_ANSWERS]
    for items in data.values():
        for it in items:
            texts.append(format_prompt(it["question"], False) + " " + it["answer"])
            texts.append(" " + it.get("answer_text", it["answer"]))
    return texts


def format_prompt(question: str, with_image: bool) -> str:
    """The prompt up to ``ASSISTANT:`` (the answer follows after one space)."""
    return (
        f"USER: <image>\n{question}\nASSISTANT:" if with_image else f"USER: {question}\nASSISTANT:"
    )


def idk_answer(item_id: str) -> str:
    """A deterministic "I don't know"-style answer for one question (IDK tuning)."""
    return IDK_ANSWERS[sum(map(ord, item_id)) % len(IDK_ANSWERS)]


class Encoder:
    """Turns items into token ids with a Llava processor; caches decoded images."""

    def __init__(self, processor: Any, data_dir: str | Path, max_length: int | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.data_dir = Path(data_dir)
        self.max_length = max_length
        self._pixels: dict[tuple[str, ...], torch.Tensor] = {}
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # SentencePiece tokenizers (LLaMA) mark the word boundary themselves ("▁D"); a
        # byte-level BPE (the tiny model) needs the space that follows "ASSISTANT:".
        first = self.tokenizer.convert_ids_to_tokens(
            self.tokenizer("a", add_special_tokens=False)["input_ids"]
        )
        self.answer_prefix = "" if first and first[0].startswith("▁") else " "

    def image(self, rel: str):
        from PIL import Image

        path = self.data_dir / rel
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot read image ({exc})") from None

    def prompt(self, item: dict) -> tuple[list[int], torch.Tensor | None]:
        """Prompt token ids (image tokens expanded) and ``(N_img, C, H, W)`` pixels or None.

        An item may carry its whole prompt: ``prompt_text`` (up to ``ASSISTANT:``) with one
        ``<image>`` per entry of ``images`` (MLLMU-Bench's few-shot MCQ,
        :func:`unlearn_bench.evaluate.mllmu_mcq_items`); otherwise :func:`format_prompt`.
        """
        if "prompt_text" in item:
            text, rels = item["prompt_text"], tuple(item["images"])
        elif item["modality"] == "image_text":
            text, rels = format_prompt(item["question"], True), (item["image"],)
        else:
            text, rels = format_prompt(item["question"], False), ()
        if not rels:
            return self.tokenizer(text)["input_ids"], None
        enc = self.processor(text=[text], images=[self.image(r) for r in rels], return_tensors="pt")
        if rels not in self._pixels:
            self._pixels[rels] = enc["pixel_values"]
        return enc["input_ids"][0].tolist(), self._pixels[rels]

    def encode(
        self, item: dict, answer: str | None = None, loss_tokens: str = "answer"
    ) -> dict[str, Any]:
        """``{"input_ids", "labels", "pixel_values"}``.

        ``loss_tokens="answer"``: labels are -100 outside the answer (and EOS). ``"full"``:
        every token is labelled (prompt, image tokens, answer), MLLMU-Bench's fine-tuning
        loss; padding is added later by :func:`collate` and stays -100 either way.
        """
        if loss_tokens not in LOSS_TOKENS:
            raise InputError("loss_tokens", f"must be one of {', '.join(LOSS_TOKENS)}")
        ids, pixels = self.prompt(item)
        ans = self.tokenizer(
            self.answer_prefix + (item["answer"] if answer is None else answer),
            add_special_tokens=False,
        )
        ans_ids = [*ans["input_ids"], self.tokenizer.eos_token_id]
        input_ids = ids + ans_ids
        labels = ([-100] * len(ids) if loss_tokens == "answer" else list(ids)) + ans_ids
        return {
            "input_ids": torch.tensor(input_ids),
            "labels": torch.tensor(labels),
            "pixel_values": pixels,
        }


def collate(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor | None]:
    """Right-padded batch: ``input_ids``/``labels``/``attention_mask`` (B, T), pixels (N_img, C, H, W),
    and ``ref_logprob`` (B,) where the items carry one."""
    n = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), -100, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, x in enumerate(items):
        t = len(x["input_ids"])
        ids[i, :t] = x["input_ids"]
        labels[i, :t] = x["labels"]
        mask[i, :t] = 1
    pix = [x["pixel_values"] for x in items if x["pixel_values"] is not None]
    out = {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "pixel_values": torch.cat(pix) if pix else None,
    }
    if "ref_logprob" in items[0]:  # NPO's reference, computed once (methods/npo.py)
        out["ref_logprob"] = torch.tensor([x["ref_logprob"] for x in items], dtype=torch.float64)
    return out


class EncodedSet(torch.utils.data.Dataset):
    """A list of encoded items as a map-style dataset."""

    def __init__(self, encoded: list[dict[str, Any]]):
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.encoded[i]


class PairedSet(torch.utils.data.Dataset):
    """Forget item ``i`` paired with a retain item drawn at random per epoch (seeded).

    The partners of epoch ``e`` are positions ``e * n_forget + i`` of an endless stream
    of seeded permutations of the retain set (block ``b`` of the stream is
    ``permutation(n_retain)`` seeded with ``(seed, b)``). So a forget item gets a new
    partner every epoch, no retain item repeats until the whole retain set has been
    used, and the partner is a function of ``(seed, epoch, i)`` only: whichever process
    reads global sample ``i`` under DDP draws the same one, as a single process does.
    The trainer announces the epoch through :meth:`set_epoch` (the PyTorch sampler
    convention, called by ``medcommon.train.Trainer`` before each step).
    """

    def __init__(self, forget: list[dict], retain: list[dict], seed: int):
        if not retain:
            raise InputError("retain", "no retain items to pair the forget items with")
        self.forget, self.retain, self.seed = forget, retain, seed
        self.epoch = 0
        self._blocks: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def partner(self, i: int, epoch: int | None = None) -> int:
        """Index into ``retain`` of forget item ``i``'s partner at ``epoch`` (default: current)."""
        e = self.epoch if epoch is None else epoch
        block, pos = divmod(e * len(self.forget) + i, len(self.retain))
        if block not in self._blocks:
            if len(self._blocks) > 4:  # only the current one or two blocks are in use
                self._blocks.clear()
            rng = np.random.default_rng([self.seed, 0x9A17, block])
            self._blocks[block] = rng.permutation(len(self.retain))
        return int(self._blocks[block][pos])

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"forget": self.forget[i], "retain": self.retain[self.partner(i)]}


def paired_collate(items: Sequence[dict], pad_id: int) -> dict[str, dict]:
    return {
        "forget": collate([x["forget"] for x in items], pad_id),
        "retain": collate([x["retain"] for x in items], pad_id),
    }
