"""Site-Modulated Diffusion: shapes, prompt conditioning, samplers; model conformance."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medai_testkit import ModelConformance
from medcommon.errors import InputError
from smg_learning.replay import smd_noise_generator, smd_step
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


# ------------------------------------------------------------------ wiring: what a broken SMD fails
# Each of these breaks fails at least one test below: the training target swapped
# (ε / x0 / v), the DDIM prediction type differing from training's, the mask channel
# dropped, no noise added in training, the mask threshold inverted.

T = 50  # linear betas 1e-4 .. 0.02 (diffusers' "linear" defaults), computed by hand below


def _alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = Π_{s <= t} (1 - β_s) for the linear schedule, independent of diffusers."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)[t].float()


def _linear(**kw) -> SiteModulatedDiffusion:
    return _smd(num_train_timesteps=T, beta_schedule="linear", **kw)


def test_mask_round_trip_and_threshold() -> None:
    from smg_learning.smd import decode_mask, encode_mask

    m = torch.tensor([[[[0, 1], [1, 0]]]])
    enc = encode_mask(m)
    torch.testing.assert_close(enc, torch.tensor([[[[-1.0, 1.0], [1.0, -1.0]]]]))
    assert torch.equal(decode_mask(enc), m)
    # nested structures: channel k is label > k
    lab = torch.tensor([[[[0, 1, 2]]]])
    enc2 = encode_mask(lab, 2)
    torch.testing.assert_close(enc2[0, :, 0], torch.tensor([[-1.0, 1.0, 1.0], [-1.0, -1.0, 1.0]]))
    assert torch.equal(decode_mask(enc2), lab)
    # values above the threshold are inside the structure
    x = torch.tensor([[[[0.3, -0.3, 0.7, 0.0]]]])
    assert decode_mask(x).flatten().tolist() == [1, 0, 1, 0]  # at the threshold: outside
    assert decode_mask(x, threshold=0.5).flatten().tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_training_inputs_noise_the_image_and_mask_and_target_the_prediction_type(kind) -> None:
    smd = _linear(prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 16, 16, generator=g)
    masks = (torch.rand(64, 1, 16, 16, generator=g) > 0.5).long()
    torch.manual_seed(1)
    xt, t, target = smd.training_inputs(images, masks)
    assert xt.shape == (64, 2, 16, 16) and t.shape == (64,)
    assert int(t.min()) >= 0 and int(t.max()) < T and len(t.unique()) > 10
    x0 = torch.cat([images * 2 - 1, masks.float() * 2 - 1], 1)  # by hand: image and mask
    ab = _alpha_bar(t).view(-1, 1, 1, 1)
    eps = (xt - ab.sqrt() * x0) / (1 - ab).sqrt()  # the noise that was added
    assert eps.mean().abs() < 0.02 and (eps.std() - 1).abs() < 0.02  # unit Gaussian noise
    want = {"epsilon": eps, "sample": x0, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0}
    torch.testing.assert_close(target, want[kind], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_read_the_training_prediction_type(kind, sampler) -> None:
    """A perfect denoiser of a one-point data set: both samplers must return that point.

    The oracle answers in the training parametrisation (ε, x0 or v of the point); a
    sampler that reads its output as another one, or loses the mask channel, or
    thresholds the mask the wrong way, does not return the point.
    """
    smd = _linear(prediction_type=kind, image_channels=1)
    x0_img = torch.linspace(-0.8, 0.8, 256).view(1, 1, 16, 16)
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    mask[..., 3:9, 4:12] = 1
    point = torch.cat([x0_img, mask.float() * 2 - 1], 1)

    def oracle(x, t, site):
        ab = _alpha_bar(t.long().cpu()).view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * point) / (1 - ab).sqrt()
        return {
            "epsilon": eps,
            "sample": point.expand_as(x),
            "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * point,
        }[kind]

    smd.forward = oracle
    images, masks = smd.sample(
        torch.tensor([0, 1]), steps=5, sampler=sampler, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(images, ((x0_img + 1) / 2).expand(2, -1, -1, -1), atol=2e-3, rtol=0)
    assert torch.equal(masks, mask.expand(2, -1, -1, -1))
    # the schedulers themselves agree with training
    for sched in (smd.train_scheduler(), smd.ddim_scheduler()):
        assert sched.config.prediction_type == kind


def test_unknown_prediction_type_is_refused() -> None:
    with pytest.raises(InputError, match="'velocity' is not one of epsilon, sample, v_prediction"):
        _linear(prediction_type="velocity").training_loss(
            torch.rand(1, 1, 16, 16), torch.zeros(1, 1, 16, 16, dtype=torch.long), torch.zeros(1)
        )


@pytest.mark.parametrize("kind", ["sample", "v_prediction"])
def test_smd_learns_a_fixed_pair(kind) -> None:
    """60 Adam steps on one image/mask pair: the loss falls and samples reproduce the mask."""
    torch.manual_seed(0)
    smd = SiteModulatedDiffusion(
        SMDModelConfig(
            image_channels=1,
            image_size=16,
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            attention=False,
            num_prompts=2,
            num_train_timesteps=50,
            beta_schedule="squaredcos_cap_v2",
            prediction_type=kind,
        )
    )
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    mask[..., 4:11, 5:12] = 1
    image = 0.2 + 0.6 * mask.float() + 0.05 * torch.linspace(0, 1, 16)
    opt = torch.optim.Adam(smd.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = smd.training_loss(
            image.expand(8, -1, -1, -1), mask.expand(8, -1, -1, -1), torch.zeros(8).long()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.4 * sum(losses[:5])
    images, masks = smd.sample(
        torch.zeros(4).long(), steps=10, generator=torch.Generator().manual_seed(0)
    )
    inter = (masks.bool() & mask.bool()).flatten(1).sum(1).float()
    union = (masks.bool() | mask.bool()).flatten(1).sum(1).float()
    assert (inter / union).min() > 0.7  # the trained shape, not noise (random IoU ~0.2)
    corr = torch.corrcoef(torch.stack([images.mean(0).flatten(), image.flatten()]))[0, 1]
    assert corr > 0.8


def test_ddp_share_draws_the_global_batch_rows() -> None:
    """Process ``rank`` of ``world`` gets the rows a single process would draw for them."""
    smd = _linear()
    images = torch.rand(4, 1, 16, 16)
    masks = (torch.rand(4, 1, 16, 16) > 0.5).long()
    torch.manual_seed(5)
    whole = smd.training_inputs(images, masks)
    for rank in (0, 1):
        torch.manual_seed(5)
        part = smd.training_inputs(
            images[2 * rank : 2 * rank + 2], masks[2 * rank : 2 * rank + 2], (rank, 2)
        )
        for a, b in zip(part, whole):
            torch.testing.assert_close(a, b[2 * rank : 2 * rank + 2])
    # the same with the run's generator (the training step's): each process builds it alike
    whole = smd.training_inputs(images, masks, generator=smd_noise_generator(0, 1, 2))
    for rank in (0, 1):
        rows = slice(2 * rank, 2 * rank + 2)
        gen = smd_noise_generator(0, 1, 2)
        part = smd.training_inputs(images[rows], masks[rows], (rank, 2), gen)
        for a, b in zip(part, whole):
            torch.testing.assert_close(a, b[rows])


def test_training_noise_is_a_function_of_seed_stage_step_and_micro_batch() -> None:
    """The SMD's DDPM noise and timesteps come from :func:`smd_noise_generator`, never
    the global RNG: the same (seed, stage, step, micro-batch) gives the same loss
    whatever was drawn before (model init, other rows), and each key its own draw."""
    smd = _linear()
    batch = {
        "image": torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)),
        "mask": torch.zeros(4, 1, 16, 16, dtype=torch.long),
        "site": torch.tensor([0, 0, 1, 1]),
    }
    one = SimpleNamespace(process_index=0, num_processes=1)

    def loss(seed: int, stage: int, step: int, micro: int = 0, global_seed: int = 0) -> float:
        torch.manual_seed(global_seed)  # whatever the global stream holds
        ctx = SimpleNamespace(step=step, micro_step=micro, accelerator=one)
        return smd_step(seed, stage)(smd, batch, ctx).item()

    ref = loss(0, 1, 2)
    assert loss(0, 1, 2, global_seed=123) == ref
    others = [loss(1, 1, 2), loss(0, 0, 2), loss(0, 1, 3), loss(0, 1, 2, micro=1)]
    assert all(v != ref for v in others) and len(set(others)) == len(others)


def test_sampling_clips_x0_keeps_the_mode_and_batches() -> None:
    smd = _linear(prediction_type="sample")
    smd.forward = lambda x, t, site: torch.full_like(x, 5.0)  # x0 far outside [-1, 1]
    smd.train()
    for sampler in ("ddim", "ddpm"):
        images, masks = smd.sample(
            torch.zeros(3).long(), steps=3, sampler=sampler, batch=2, mask_threshold=1.5
        )
        assert images.shape == (3, 1, 16, 16)
        assert torch.equal(images, torch.ones_like(images))
        # the scheduler clips x0 to 1: below a threshold of 1.5 (5 would be above)
        assert torch.equal(masks, torch.zeros_like(masks))
    assert smd.training  # sample() switched to eval and back
    smd.eval()
    smd.sample(torch.zeros(1).long(), steps=2)
    assert not smd.training
    with pytest.raises(InputError, match="shape"):
        smd.sample(torch.zeros(2).long(), steps=2, noise=torch.zeros(1, 2, 16, 16))
    with pytest.raises(InputError, match="unknown sampler"):
        smd.sample(torch.zeros(1).long(), steps=2, sampler="euler")


def test_attention_config_puts_attention_in_the_deepest_blocks() -> None:
    """``attention=True`` (the full preset): attention in the last down and first up block."""
    smd = _smd(attention=True, block_out_channels=(8, 16, 16))
    names = [type(b).__name__ for b in smd.unet.down_blocks]
    ups = [type(b).__name__ for b in smd.unet.up_blocks]
    assert names == ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]
    assert ups == ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]
    out = smd(torch.randn(2, 2, 16, 16), torch.tensor([3, 7]), torch.tensor([0, 1]))
    assert out.shape == (2, 2, 16, 16)
    plain = _smd(attention=False, block_out_channels=(8, 16, 16))
    assert [type(b).__name__ for b in plain.unet.down_blocks] == ["DownBlock2D"] * 3


def test_timesteps_cover_the_whole_schedule_and_errors_name_their_flag() -> None:
    smd = _linear()
    images = torch.rand(2000, 1, 2, 2)
    _, t, _ = smd.training_inputs(images, torch.zeros(2000, 1, 2, 2, dtype=torch.long))
    assert sorted(t.unique().tolist()) == list(range(T))  # t = 0 and t = T - 1 included
    with pytest.raises(InputError) as exc:
        smd.sample(torch.zeros(2).long(), steps=2, noise=torch.zeros(1, 2, 16, 16))
    assert exc.value.where == "noise"
    with pytest.raises(InputError) as exc:
        smd.sample(torch.zeros(1).long(), steps=2, sampler="euler")
    assert exc.value.where == "--sampler"
    with pytest.raises(InputError) as exc:
        smd.site_index("C")
    assert exc.value.where == "--site"


def test_sampling_runs_the_network_in_eval_mode() -> None:
    smd = _linear(prediction_type="sample")
    modes = []

    def oracle(x, t, site):
        modes.append(smd.training)
        return torch.zeros_like(x)

    smd.forward = oracle
    smd.train()
    smd.sample(torch.zeros(1).long(), steps=2)
    assert modes and not any(modes) and smd.training


@pytest.mark.parametrize(
    "spacing, want", [("trailing", [49, 39, 29, 19, 9]), ("leading", [40, 30, 20, 10, 0])]
)
def test_ddim_timestep_spacing_decides_where_sampling_starts(spacing, want) -> None:
    """DDIM-5 of T = 50: "trailing" starts at t = T - 1 (pure noise, as training's last
    step); "leading" (diffusers' default) starts at t = 40. The network is called at
    exactly those timesteps."""
    smd = _linear(timestep_spacing=spacing, prediction_type="sample")
    seen = []

    def oracle(x, t, site):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    smd.forward = oracle
    smd.sample(torch.tensor([0]), steps=5, generator=torch.Generator().manual_seed(0))
    assert seen == want
    with pytest.raises(InputError, match="'middle' is not one of leading, trailing") as exc:
        _linear(timestep_spacing="middle").sample(torch.tensor([0]), steps=2)
    assert exc.value.where == "--set smd.timestep_spacing"


def test_model_config_defaults_are_the_full_configuration() -> None:
    """``SMDModelConfig()`` builds the ``full`` preset's SMD (what a folder missing a field
    gets), except the DDIM spacing, which stays at what such older folders sampled with."""
    from smg_learning.config import SMDConfig

    model, run = SMDModelConfig(), SMDConfig()
    for name in (
        "block_out_channels",
        "layers_per_block",
        "norm_num_groups",
        "attention",
        "num_prompts",
        "num_train_timesteps",
        "beta_schedule",
        "prediction_type",
    ):
        assert getattr(model, name) == getattr(run, name), name
    assert (model.timestep_spacing, run.timestep_spacing) == ("leading", "trailing")


def test_a_model_saved_before_timestep_spacing_samples_as_it_did(tmp_path) -> None:
    """Saved SMD folders without ``timestep_spacing`` keep diffusers' "leading" spacing."""
    import json

    from medcommon.models import from_pretrained, save_pretrained

    smd = _smd()
    save_pretrained(smd, tmp_path / "m", smd.config)
    cfg_file = tmp_path / "m" / "config.json"
    raw = json.loads(cfg_file.read_text())
    raw.pop("timestep_spacing")
    cfg_file.write_text(json.dumps(raw))
    old = from_pretrained(SiteModulatedDiffusion, tmp_path / "m")
    assert old.config.timestep_spacing == "leading"
    assert old.ddim_scheduler().config.timestep_spacing == "leading"
