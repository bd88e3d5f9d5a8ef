"""Dice-matrix bookkeeping and per-site metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcommon.metrics import dice
from smg_learning.config import run_preset
from smg_learning.data import SiteSlices, load_continual
from smg_learning.evaluate import evaluate_site, stage_metrics, summarize
from smg_learning.segmenter import Segmenter


def test_summarize_matches_hand_computation() -> None:
    cols = ["A", "B", "C", "H"]  # three training sites, one held out
    d = np.array([[0.9, 0.2, 0.3, 0.1], [0.5, 0.8, 0.4, 0.2], [0.6, 0.7, 0.85, 0.3]])
    rows = [
        {
            **{f"dice/{c}": d[t, j] for j, c in enumerate(cols)},
            **{f"hd95/{c}": 10.0 * (t + 1) + j for j, c in enumerate(cols)},
        }
        for t in range(3)
    ]
    out = summarize(rows, ["A", "B", "C"], cols)
    assert out["stages"] == ["site-A", "site-B", "site-C"]
    assert out["dice_matrix"] == d.tolist()
    assert out["memorizability"] == pytest.approx((0.6 + 0.7 + 0.85) / 3)
    # stage 0 unseen: B, C, H; stage 1: C, H; stage 2: H
    gen = np.mean([np.mean([0.2, 0.3, 0.1]), np.mean([0.4, 0.2]), 0.3])
    assert out["generalizability"] == pytest.approx(gen)
    assert out["bwt"] == pytest.approx(((0.6 - 0.9) + (0.7 - 0.8)) / 2)
    assert out["hd95"] == pytest.approx(np.mean([30, 31, 32]))
    assert out["hd95_unseen"] == pytest.approx(np.mean([13, 23, 33]))


class _Oracle(torch.nn.Module):
    """Predicts a fixed mask per input (looked up by its first pixel value)."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.masks = masks
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        idx = x[:, 0, 0, 0].round().long()
        return self.masks[idx].bool()


def test_evaluate_site_is_per_case_volume_dice() -> None:
    truth = torch.zeros(4, 1, 8, 8, dtype=torch.long)
    truth[0, 0, 2:6, 2:6] = 1  # case 0: slices 0, 1
    truth[2, 0, 0:4, 0:4] = 1  # case 1: slices 2, 3
    pred = truth[:, 0].clone()
    pred[1, 0:2, 0:2] = 1  # 4 false-positive pixels in case 0
    pred[3] = 0
    images = torch.arange(4).float()[:, None, None, None].expand(4, 1, 8, 8).clone()
    part = SiteSlices("S", ["c0", "c1"], images, truth, np.array([0, 0, 1, 1]))
    got = evaluate_site(_Oracle(pred), part)
    want0 = dice(pred[:2].numpy(), truth[:2, 0].numpy())  # 2*16/(20+16)
    assert want0 == pytest.approx(32 / 36)
    assert got["dice"] == pytest.approx((want0 + 1.0) / 2)


def test_stage_metrics_columns(prostate_dir) -> None:
    from smg_learning.segmenter import SegmenterConfig

    data = load_continual(prostate_dir, run_preset("tiny"), ("RUNMC", "BMC"), ("I2CVB",))
    torch.manual_seed(0)
    m = stage_metrics(Segmenter(SegmenterConfig(1, (4, 8), 0)), data, "test")
    assert sorted(m) == sorted(f"{k}/{s}" for k in ("dice", "hd95") for s in data.columns)
    assert all(0 <= m[f"dice/{s}"] <= 1 for s in data.columns)
    assert all(np.isfinite(v) for v in m.values())

    # An oracle that returns the ground-truth masks as logits scores perfectly everywhere.
    parts = data.parts["test"]
    images = torch.cat([parts[s].images for s in data.columns])
    masks = torch.cat([parts[s].masks[:, 0] for s in data.columns])
    assert masks.any()  # non-trivial foreground
    m = stage_metrics(_LogitOracle(images, masks), data, "test")
    assert sorted(m) == sorted(f"{k}/{s}" for k in ("dice", "hd95") for s in data.columns)
    for s in data.columns:
        assert m[f"dice/{s}"] == pytest.approx(1.0), s
        assert m[f"hd95/{s}"] == pytest.approx(0.0), s


class _LogitOracle(torch.nn.Module):
    """Looks each input image up (exact match) and returns its true mask as 2-class logits."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        super().__init__()
        self.images = images.flatten(1)
        self.masks = masks.long()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eq = (x.flatten(1)[:, None, :] == self.images[None]).all(-1)  # (B, N)
        assert bool(eq.any(1).all()), "input image not in the oracle's table"
        fg = self.masks[eq.float().argmax(1)].float()  # (B, H, W)
        return torch.stack([1.0 - fg, fg], 1) * 10.0  # (B, 2, H, W) logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
        return Segmenter.predict(self, x, batch)
