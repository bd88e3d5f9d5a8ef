"""Train-time augmentation (the authors' random resized crop + flip / flip) and its wiring."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from medcommon.errors import InputError
from pbbl_cxr.config import ModelConfig, run_preset
from pbbl_cxr.data import XrayDataset, augment_batch, random_resized_crop_box
from pbbl_cxr.models import build_model
from pbbl_cxr.train import fit_stage


def test_crop_boxes_follow_torchvision_ranges():
    gen = torch.Generator().manual_seed(0)
    shares, boxes = [], set()
    for _ in range(400):
        top, left, h, w = random_resized_crop_box(224, 224, gen)
        assert min(top, left) >= 0 and top + h <= 224 and left + w <= 224
        # rounding of w and h moves area and ratio a little off the drawn values
        assert 0.08 * 224 * 224 * 0.95 <= h * w <= 224 * 224
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
        shares.append(h * w / 224**2)
        boxes.add((top, left, h, w))
    assert len(boxes) > 350  # crops vary
    assert min(shares) < 0.15 and max(shares) > 0.9  # the whole 0.08-1 range is used
    # A tall strip cannot fit any ratio within 10 tries: central crop, ratio clamped to 3/4.
    assert random_resized_crop_box(100, 10, torch.Generator().manual_seed(0), scale=(1.0, 1.0)) == (
        43, 0, round(10 / 0.75), 10,
    )  # fmt: skip


def _ramps(n: int, size: int = 16) -> torch.Tensor:
    ramp = torch.linspace(0.1, 0.9, size).expand(size, size)  # increases left to right
    return torch.stack([ramp + 0.001 * i for i in range(n)])[:, None]  # (n, 1, S, S)


def test_flip_mirrors_about_half_the_images_deterministically():
    images = _ramps(64)
    index = torch.arange(64)
    out = augment_batch(images, index, "flip", seed=3, step=5)
    mirrored = [bool(torch.equal(o, i.flip(-1))) for o, i in zip(out, images)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, images)]
    assert all(m != k for m, k in zip(mirrored, kept))
    assert 16 < sum(mirrored) < 48
    assert torch.equal(out, augment_batch(images, index, "flip", seed=3, step=5))
    assert not torch.equal(out, augment_batch(images, index, "flip", seed=3, step=6))
    # A sample's draw depends on (seed, step, index) only, not on its batch (DDP, resume).
    alone = augment_batch(images[7:8], index[7:8], "flip", seed=3, step=5)
    assert torch.equal(alone[0], out[7])
    assert augment_batch(images, index, "none", seed=3, step=5) is images


def test_crop_flip_keeps_a_ramp_monotone_and_a_constant_constant():
    images = _ramps(32)
    out = augment_batch(images, torch.arange(32), "crop-flip", seed=0, step=0)
    assert out.shape == images.shape
    changed = 0
    for o, i in zip(out, images):
        row = o[0, 8]
        d = row[1:] - row[:-1]
        assert (d >= -1e-6).all() or (d <= 1e-6).all()  # a crop of a ramp, maybe mirrored
        assert i.min() - 1e-5 <= o.min() and o.max() <= i.max() + 1e-5  # inside the original
        changed += not torch.allclose(o, i) and not torch.allclose(o, i.flip(-1))
    assert changed > 24  # most images are really cropped (zoomed)
    flat = torch.full((4, 1, 16, 16), 0.25)
    assert torch.allclose(augment_batch(flat, torch.arange(4), "crop-flip", 0, 0), flat)
    with pytest.raises(InputError, match="unknown augmentation"):
        augment_batch(flat, torch.arange(4), "rotate", 0, 0)


@pytest.mark.parametrize("mode", ["none", "flip", "crop-flip"])
def test_fit_stage_feeds_augmented_images_to_the_step(mode: str):
    n, size = 32, 16
    torch.manual_seed(0)
    ds = XrayDataset(_ramps(n, size).half(), torch.arange(n) % 2, torch.arange(n) % 2)
    cfg = replace(run_preset("tiny"), batch_size=8, augment=mode, log_every=1)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def step(model, batch, ctx):
        seen.append((batch["index"].clone(), batch["image"].clone()))
        return torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])

    model = build_model(ModelConfig(width=4, image_size=size))
    fit_stage(model, ds, step, cfg, steps=4, valid_set=None, select=False, seed=1)
    index = torch.cat([i for i, _ in seen])
    images = torch.cat([x for _, x in seen])
    plain = ds.images[index].float()
    same = [torch.equal(a, b) for a, b in zip(images, plain)]
    if mode == "none":
        assert all(same)
        return
    assert not all(same)
    expected = torch.cat(
        [
            augment_batch(ds.images[i].float(), i, mode, seed=1, step=s)
            for s, (i, _) in enumerate(seen)
        ]
    )
    assert torch.equal(images, expected)
    assert math.isfinite(float(images.sum()))
