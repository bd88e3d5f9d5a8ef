"""Batches: answer-only labels ending in EOS, padding outside the loss, GradDiff's retain partners."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medcommon.train.config import TrainConfig
from medcommon.train.loop import Trainer
from unlearn_bench.data import PairedSet, collate
from unlearn_bench.losses import nll
from unlearn_bench.methods import forward


def test_labels_are_the_answer_tokens_then_eos(tiny):
    _, enc, data = tiny
    tok = enc.tokenizer
    for it in (data["forget"][0], data["retain"][1], data["general"][2]):
        x = enc.encode(it)
        ans = tok(enc.answer_prefix + it["answer"], add_special_tokens=False)["input_ids"]
        labelled = x["labels"][x["labels"] != -100].tolist()
        assert labelled == [*ans, tok.eos_token_id]  # EOS is trained: the model learns to stop
        n = len(labelled)
        assert x["input_ids"][-n:].tolist() == labelled  # the answer closes the sequence
        assert (x["labels"][:-n] == -100).all()  # no loss on the prompt


@torch.no_grad()
def test_padding_is_outside_the_loss(tiny):
    """NLL of a padded batch = the token-weighted NLL of each sequence alone (by hand)."""
    model, enc, data = tiny
    items = [data["forget"][0], data["retain"][5], data["general"][1]]
    encoded = [enc.encode(it) for it in items]
    assert len({len(x["input_ids"]) for x in encoded}) > 1  # padding is needed
    batch = collate(encoded, enc.tokenizer.pad_token_id)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    total, count = 0.0, 0
    for x in encoded:  # one unpadded sequence at a time, torch's cross entropy
        logits = model(
            input_ids=x["input_ids"][None],
            attention_mask=torch.ones_like(x["input_ids"])[None],
            pixel_values=x["pixel_values"],
        ).logits[0, :-1]
        target = x["labels"][1:]
        keep = target != -100
        total += float(F.cross_entropy(logits[keep], target[keep], reduction="sum"))
        count += int(keep.sum())
    got = nll(forward(model, batch).logits, batch["labels"]).item()
    assert got == pytest.approx(total / count, rel=1e-5)


# ------------------------------------------------------------------ GradDiff's partners
def _paired(n_forget=6, n_retain=20, seed=0):
    return PairedSet(list(range(n_forget)), [f"r{j}" for j in range(n_retain)], seed)


def test_partners_change_per_epoch_and_cover_the_retain_set():
    ds = _paired()
    seen, per_epoch = set(), []
    for epoch in range(4):  # 4 epochs x 6 forget items >= 20 retain items
        ds.set_epoch(epoch)
        partners = [ds[i]["retain"] for i in range(len(ds))]
        assert [ds[i]["forget"] for i in range(len(ds))] == list(range(6))
        per_epoch.append(partners)
        seen |= set(partners)
    assert seen == {f"r{j}" for j in range(20)}  # the whole retain set is used
    assert all(per_epoch[0][i] != per_epoch[1][i] for i in range(6))  # new partners each epoch
    stream = [ds.partner(i, e) for e in range(4) for i in range(6)][:20]
    assert len(set(stream)) == 20  # no retain item repeats before all are used


def test_partners_are_a_function_of_seed_epoch_and_index():
    a, b = _paired(seed=3), _paired(seed=3)
    # b is read in another order, as another DDP process reading other samples would
    b.set_epoch(2)
    backwards = {i: b[i]["retain"] for i in reversed(range(6))}
    a.set_epoch(0)
    _ = [a[i] for i in range(6)]
    a.set_epoch(2)
    assert {i: a[i]["retain"] for i in range(6)} == backwards
    assert [_paired(seed=4).partner(i, 2) for i in range(6)] != [a.partner(i, 2) for i in range(6)]


def test_trainer_announces_the_epoch_to_the_dataset():
    """medcommon's Trainer calls ``set_epoch`` before each step (the retain draws need it)."""

    class Recorder(torch.utils.data.Dataset):
        def __init__(self):
            self.epoch, self.reads = 0, []

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return 4

        def __getitem__(self, i):
            self.reads.append((self.epoch, i))
            return torch.tensor([float(i)])

    ds, lin = Recorder(), torch.nn.Linear(1, 1)
    trainer = Trainer(
        lin,
        torch.optim.SGD(lin.parameters(), lr=0.0),
        ds,
        lambda model, batch, ctx: model(batch).sum() * 0,
        config=TrainConfig(max_steps=6, batch_size=2, log_every=0),
        collate_fn=torch.stack,
        device="cpu",
        quiet=True,
    )
    trainer.fit()
    epochs = [e for e, _ in ds.reads]
    assert epochs == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]  # 2 steps of 2 per epoch of 4
    for e in range(3):  # each epoch reads every sample once
        assert sorted(i for ep, i in ds.reads if ep == e) == [0, 1, 2, 3]
    assert math.isfinite(float(lin.weight))
