"""Cost measurements on the fundus layout (disc + cup: a 3-class segmenter)."""

from __future__ import annotations

import torch

from smg_learning.config import run_preset
from smg_learning.costs import _structure_dice, _train_on, time_pga
from smg_learning.data import load_continual
from smg_learning.synth import write_dofe_release


def test_costs_build_a_segmenter_with_every_structure(tmp_path) -> None:
    cfg = run_preset("tiny")
    root = write_dofe_release(tmp_path / "dofe", size=32)  # the DoFE layout: disc + cup
    data = load_continual(root, cfg, ("Domain1", "Domain2"), ())
    assert len(data.structures) == 2 and int(data.parts["train"]["Domain1"].masks.max()) == 2
    out = time_pga(data, cfg, repeats=1)  # a 2-class segmenter fails on label 2 in the loss
    assert out["pga_step_s"] > 0 and out["step_samples"] > 0
    part = data.parts["train"]["Domain1"]
    model = _train_on(part.images, part.masks, cfg, data, steps=1, seed=0)
    assert model.predict(part.images[:2]).shape == part.masks[:2, 0].shape
    assert model(part.images[:1]).shape[1] == 3


def test_structure_dice_averages_the_nested_structures() -> None:
    mask = torch.tensor([[0, 1, 1, 2]])
    pred = torch.tensor([[0, 1, 2, 2]])
    # label > 0: identical (1.0); label > 1: {3} vs {2, 3} -> 2/3
    assert abs(_structure_dice(pred, mask, 2) - (1.0 + 2 / 3) / 2) < 1e-9
