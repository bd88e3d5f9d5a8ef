"""Synthetic primitives, and model saving/loading through the shared conformance checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from medai_testkit import ModelConformance
from medcommon import synthetic as syn
from medcommon.errors import InputError
from medcommon.models import from_pretrained, save_pretrained


def test_ellipse_area_matches_formula():
    mask = syn.ellipse((201, 201), center=(0, 0), radii=(0.5, 0.25))
    # radii in normalised units: 0.5 * 100 px and 0.25 * 100 px.
    assert mask.sum() == pytest.approx(np.pi * 50 * 25, rel=0.02)


def test_generators_are_pure_functions_of_the_seed():
    a = syn.random_blob((32, 32), np.random.default_rng(5), (0, 0), 0.5)
    b = syn.random_blob((32, 32), np.random.default_rng(5), (0, 0), 0.5)
    c = syn.random_blob((32, 32), np.random.default_rng(6), (0, 0), 0.5)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    field = syn.smooth_noise((16, 16, 16), np.random.default_rng(0), 2)
    assert abs(field.mean()) < 1e-9 and field.std() == pytest.approx(1.0)


def test_site_styles_shift_intensity_statistics():
    rng = np.random.default_rng(0)
    img = syn.gaussian_blur(
        syn.ellipse((64, 64), (0, 0), (0.6, 0.4)).astype(float) * 0.7 + 0.1, 1.0
    )
    bright = syn.apply_site_style(img, syn.SiteStyle(gamma=0.5), rng)
    dark = syn.apply_site_style(img, syn.SiteStyle(gamma=2.0), rng)
    assert bright.mean() > img.mean() > dark.mean()
    noisy = syn.apply_site_style(img, syn.SiteStyle(noise_sigma=0.1), rng)
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    assert (noisy - img).std() > 0.05
    assert len({s.gamma for s in syn.random_site_styles(4, rng)}) == 4


@dataclass(frozen=True)
class TinyConfig:
    channels: int = 4
    classes: int = 2


class TinyNet(torch.nn.Module):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.conv = torch.nn.Conv2d(1, config.channels, 3, padding=1)
        self.head = torch.nn.Linear(config.channels, config.classes)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean((2, 3)))


class TestTinyNetConformance(ModelConformance):
    def make_model(self):
        return TinyNet(TinyConfig())

    def make_input(self):
        return torch.randn(2, 1, 8, 8)


def test_loading_into_the_wrong_architecture_is_an_input_error(tmp_path):
    save_pretrained(TinyNet(TinyConfig(channels=4)), tmp_path / "m", TinyConfig(channels=4))
    cfg = tmp_path / "m" / "config.json"
    cfg.write_text(cfg.read_text().replace('"channels": 4', '"channels": 8'))
    with pytest.raises(InputError, match="weights do not fit TinyNet"):
        from_pretrained(TinyNet, tmp_path / "m")
    with pytest.raises(InputError, match="not a saved model folder"):
        from_pretrained(TinyNet, tmp_path)
