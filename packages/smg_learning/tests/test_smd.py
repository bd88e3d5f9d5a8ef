"""Site-Modulated Diffusion: shapes, prompt conditioning, samplers; model conformance."""

from __future__ import annotations

import pytest
import torch

from medcommon.errors import InputError
from medcommon.testing import ModelConformance
from smg_learning.segmenter import SegLoss, Segmenter, SegmenterConfig
from smg_learning.smd import SiteModulatedDiffusion, SMDModelConfig

CFG = SMDModelConfig(
    image_channels=1,
    image_size=16,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    attention=False,
    num_prompts=4,
    num_train_timesteps=50,
    beta_schedule="squaredcos_cap_v2",
    site_names=("A", "B"),
)


def _smd(**kw) -> SiteModulatedDiffusion:
    torch.manual_seed(0)
    return SiteModulatedDiffusion(SMDModelConfig(**{**CFG.__dict__, **kw}))


def test_sample_shapes_and_ranges() -> None:
    smd = _smd(image_channels=3)
    images, masks = smd.sample(
        torch.tensor([0, 1, 1]), steps=3, generator=torch.Generator().manual_seed(0)
    )
    assert images.shape == (3, 3, 16, 16) and masks.shape == (3, 1, 16, 16)
    assert images.min() >= 0 and images.max() <= 1
    assert set(masks.unique().tolist()) <= {0, 1} and masks.dtype == torch.long


def test_different_site_prompts_give_different_samples_from_the_same_noise() -> None:
    smd = _smd()
    noise = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    a, _ = smd.sample(torch.tensor([0, 0]), steps=4, noise=noise)
    a2, _ = smd.sample(torch.tensor([0, 0]), steps=4, noise=noise)
    b, _ = smd.sample(torch.tensor([1, 1]), steps=4, noise=noise)
    assert torch.equal(a, a2)  # DDIM (eta = 0) is deterministic given the noise
    assert (a - b).abs().mean() > 1e-3
    # the prompt enters only through its embedding: equal embeddings give equal samples
    with torch.no_grad():
        smd.prompts[1] = smd.prompts[0]
    b_same, _ = smd.sample(torch.tensor([1, 1]), steps=4, noise=noise)
    assert torch.allclose(a, b_same)


def test_prompts_are_learnable_and_trained() -> None:
    smd = _smd()
    before = smd.prompts.detach().clone()
    opt = torch.optim.Adam(smd.parameters(), lr=1e-2)
    x = torch.rand(4, 1, 16, 16)
    m = (torch.rand(4, 1, 16, 16) > 0.5).long()
    loss = smd.training_loss(x, m, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = (smd.prompts.detach() - before).abs().sum(1)
    assert changed[0] > 0 and changed[1] > 0 and changed[2] == 0  # unused prompt untouched


def test_ddpm_sampler_and_site_lookup() -> None:
    smd = _smd(num_train_timesteps=10)
    images, _ = smd.sample(
        torch.tensor([0]), sampler="ddpm", generator=torch.Generator().manual_seed(0)
    )
    assert images.shape == (1, 1, 16, 16)
    sites = torch.tensor([0, 1])

    def draw(sampler: str, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return smd.sample(sites, steps=10, sampler=sampler, generator=g)

    ddpm, ddpm_masks = draw("ddpm")
    assert ddpm.shape == (2, 1, 16, 16) and ddpm_masks.shape == (2, 1, 16, 16)
    assert ddpm.min() >= 0 and ddpm.max() <= 1  # documented: images in [0, 1]
    assert ddpm_masks.dtype == torch.long and set(ddpm_masks.unique().tolist()) <= {0, 1}
    again, again_masks = draw("ddpm")
    assert torch.equal(ddpm, again) and torch.equal(ddpm_masks, again_masks)  # same seed
    assert not torch.equal(ddpm, draw("ddpm", seed=1)[0])  # the seed matters
    ddim, _ = draw("ddim")  # same initial noise, deterministic sampler
    assert (ddpm - ddim).abs().mean() > 1e-3
    assert smd.site_index("B") == 1
    with pytest.raises(InputError, match="unknown site 'C'"):
        smd.site_index("C")


class TestSMDConformance(ModelConformance):
    def make_model(self):
        return SiteModulatedDiffusion(CFG)

    def make_input(self):
        return (torch.randn(2, 2, 16, 16), torch.tensor([3, 40]), torch.tensor([0, 1]))


class TestSegmenterConformance(ModelConformance):
    def make_model(self):
        return Segmenter(SegmenterConfig(in_channels=1, channels=(4, 8), num_res_units=0))

    def make_input(self):
        return torch.rand(2, 1, 16, 16)


def test_segloss_matches_monai_dice_plus_ce() -> None:
    from monai.losses import DiceLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    y = (torch.rand(2, 1, 8, 8) > 0.5).long()
    ce = torch.nn.functional.cross_entropy(logits, y[:, 0])
    dl = DiceLoss(to_onehot_y=True, softmax=True)(logits, y)
    assert SegLoss(0.5)(logits, y).item() == pytest.approx(
        0.5 * dl.item() + 0.5 * ce.item(), rel=1e-5
    )
