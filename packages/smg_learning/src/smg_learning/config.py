"""Configuration: frozen dataclasses with the paper's (or its predecessors') defaults.

``RunConfig`` is everything ``smg-learning train`` uses; nested ``pga`` and ``smd``
sections hold the Parallel Gradient Alignment and Site-Modulated Diffusion
settings. Presets: ``tiny`` (unit tests, seconds), ``demo`` (the central claim in ~2
minutes), ``small`` (the CPU benchmark, minutes), ``full`` (the paper-scale setting for
a GPU and the public data).
Override any field with ``--config F.yaml`` or ``--set key=value`` (dotted for
nested fields, e.g. ``--set pga.inner_lr=0.02``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medcommon.config import PRESETS as PRESETS  # re-exported: the package's presets
from medcommon.config import check_preset as check_preset
from medcommon.config import replace_nested
from medcommon.errors import InputError

#: The public six-site prostate MRI set, in the order used by the group's framework.
PROSTATE_SITES = ("RUNMC", "BMC", "I2CVB", "UCL", "BIDMC", "HK")
#: Domain names of the public multi-site fundus (optic disc/cup) set.
FUNDUS_SITES = ("Domain1", "Domain2", "Domain3", "Domain4")


@dataclass(frozen=True)
class PGAConfig:
    """Parallel Gradient Alignment as first-order dual meta-objectives (see the README).

    Objective (see README): ``L_cur(θ) + beta_mem·L_rep(θ − α d(∇L_cur)) +
    beta_gen·[L_mtr(θ) + L_mte(θ − α d(∇L_mtr))]`` with ``α = inner_lr`` and ``d`` the
    ``virtual_step`` (``sgd``: the gradient; ``adam``: divided by the square root of
    the outer Adam's second moment; ``normalized``: scaled to RMS 1 per parameter).
    ``estimator``: ``first_order`` (MLDG, keeps half of the alignment gradient to first
    order), ``symmetric`` (both roles, the full alignment gradient to first order) or
    ``exact`` (second-order autograd); see :mod:`smg_learning.pga`. ``measure``: log
    the alignment part's share of each update (two extra backward passes a step for
    ``first_order``/``exact``).
    """

    inner_lr: float = 0.01
    beta_mem: float = 1.0
    beta_gen: float = 0.5
    estimator: Literal["first_order", "symmetric", "exact"] = "first_order"
    virtual_step: Literal["sgd", "adam", "normalized"] = "sgd"
    measure: bool = True
    shifted_copies: int = 1
    meta_test_domains: int = 1
    shift_strength: float = 1.0


@dataclass(frozen=True)
class SMDConfig:
    """Site-Modulated Diffusion: a diffusers U-Net over image + mask, one prompt per site."""

    image_size: int = 0  # 0: the segmenter's image_size; samples are resized to it
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    # DDIM timestep spacing: "trailing" starts sampling at t = T - 1 (see smd.SMDModelConfig)
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "trailing"
    block_out_channels: tuple[int, ...] = (64, 128, 256, 256)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    attention: bool = True
    num_prompts: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    train_steps: int = 20000
    batch_size: int = 16
    lr: float = 1e-4
    ddim_steps: int = 100
    replay_per_site: int = 256
    mask_threshold: float = 0.0


@dataclass(frozen=True)
class RunConfig:
    """One continual run: data, segmenter, strategy settings, PGA and SMD."""

    # data
    task: Literal["auto", "prostate", "fundus"] = "auto"
    sites: tuple[str, ...] = ()
    heldout: tuple[str, ...] = ()
    image_size: int = 192
    adjacent_slices: int = 1
    test_fraction: float = 0.3
    split_seed: int = 0
    mask_labels: tuple[int, ...] = ()
    foreground_labels: tuple[int, ...] = ()
    # segmenter (MONAI 2D U-Net, 32 base filters in the group's framework)
    channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    num_res_units: int = 2
    lr: float = 5e-4
    weight_decay: float = 1e-4
    dice_weight: float = 0.5
    steps_per_site: int = 5000
    batch_size: int = 16
    # replay (real or generated): share of each batch that is replay, stored samples per site
    replay_batch: int = 16
    replay_per_site: int = 256
    # baselines
    ewc_lambda: float = 100.0
    ewc_batches: int = 8
    lwf_alpha: float = 1.0
    lwf_temperature: float = 2.0
    # loop
    log_every: int = 50
    checkpoint_every: int = 0
    pga: PGAConfig = field(default_factory=PGAConfig)
    smd: SMDConfig = field(default_factory=SMDConfig)
    # EWC's Fisher: squared per-sample gradients (the empirical Fisher) or, for
    # comparison, squared batch-mean gradients (smaller by about the batch size)
    ewc_fisher: Literal["per-sample", "batch"] = "per-sample"
    # real replay: total stored slices over all finished sites (0: replay_per_site
    # each, no total cap); a finished site's share is a prefix of its fixed buffer
    replay_capacity: int = 0

    def __post_init__(self) -> None:
        checks = [
            (
                "image_size",
                self.image_size >= 16 and self.image_size % 8 == 0,
                "a multiple of 8, >= 16",
            ),
            ("adjacent_slices", self.adjacent_slices in (1, 3), "1 or 3"),
            ("test_fraction", 0.0 < self.test_fraction < 1.0, "in (0, 1)"),
            ("steps_per_site", self.steps_per_site >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("replay_batch", self.replay_batch >= 1, ">= 1"),
            ("replay_per_site", self.replay_per_site >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("ewc_fisher", self.ewc_fisher in ("per-sample", "batch"), "per-sample or batch"),
            ("replay_capacity", self.replay_capacity >= 0, ">= 0"),
            ("channels", len(self.channels) >= 2, "at least two levels"),
            ("pga.inner_lr", self.pga.inner_lr >= 0, ">= 0"),
            (
                "pga.estimator",
                self.pga.estimator in ("first_order", "symmetric", "exact"),
                "first_order, symmetric or exact",
            ),
            (
                "pga.virtual_step",
                self.pga.virtual_step in ("sgd", "adam", "normalized"),
                "sgd, adam or normalized",
            ),
            ("pga.shifted_copies", self.pga.shifted_copies >= 0, ">= 0"),
            ("pga.meta_test_domains", self.pga.meta_test_domains >= 1, ">= 1"),
            ("smd.ddim_steps", self.smd.ddim_steps >= 1, ">= 1"),
            (
                "smd.image_size",
                self.smd.image_size == 0
                or (self.smd.image_size >= 8 and self.smd.image_size % 4 == 0),
                "0 (the segmenter's size) or a multiple of 4, >= 8",
            ),
            ("smd.num_prompts", self.smd.num_prompts >= 1, ">= 1"),
            ("smd.replay_per_site", self.smd.replay_per_site >= 1, ">= 1"),
            (
                "smd.block_out_channels",
                all(c % self.smd.norm_num_groups == 0 for c in self.smd.block_out_channels),
                f"multiples of smd.norm_num_groups ({self.smd.norm_num_groups})",
            ),
        ]
        for name, ok, need in checks:
            if not ok:
                raise InputError(f"--set {name}", f"must be {need}")


#: Named SMD settings (the ``smd`` section), applied on top of a run preset with
#: ``--smd-preset NAME`` (``train`` and ``benchmark``) or :func:`with_smd_preset`.
#:
#: - ``x0-16px``: the ``small`` preset's SMD (and ``demo``'s, with fewer steps): 16 px,
#:   x0-prediction, DDIM with diffusers' "leading" spacing, 64 replay pairs a site. A
#:   smoke-test scale: cheap, blurry, upsampled to the segmenter's 32 px.
#: - ``v-32px`` (issue #12): replay at the segmenter's own 32 px. v-prediction with the
#:   cosine schedule (the target stays informative at both ends of the chain, where ε
#:   is degenerate near t = T and x0 near t = 0), DDIM-20 with "trailing" spacing (the
#:   first step is t = 999, pure noise, as in training), a (16, 32, 64) U-Net trained
#:   1500 steps a site, and 128 replay pairs a site. Fixed before any benchmark run
#:   with it; see ``benchmarks/smd-v32/``.
SMD_PRESETS: dict[str, dict] = {
    "x0-16px": dict(
        image_size=16,
        prediction_type="sample",
        timestep_spacing="leading",
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention=False,
        train_steps=400,
        batch_size=16,
        lr=2e-3,
        ddim_steps=20,
        replay_per_site=64,
        beta_schedule="squaredcos_cap_v2",
    ),
    "v-32px": dict(
        image_size=32,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        attention=False,
        train_steps=1500,
        batch_size=16,
        lr=1e-3,
        ddim_steps=20,
        replay_per_site=128,
        beta_schedule="squaredcos_cap_v2",
    ),
}
#: ``v-32px-pool64``: ``v-32px`` with ``x0-16px``'s pool of 64 pairs a site, added after
#: the ``v-32px`` run to separate the pool size from the other changes (protocol in
#: ``benchmarks/smd-v32-pool64/PROTOCOL.md``, committed before its run).
SMD_PRESETS["v-32px-pool64"] = {**SMD_PRESETS["v-32px"], "replay_per_site": 64}


def run_preset(preset: str) -> RunConfig:
    """The config of a named preset (``tiny``, ``demo``, ``small`` or ``full``)."""
    full = RunConfig()
    if check_preset(preset) == "full":
        return full
    if preset == "demo":
        # the small models with fewer steps: three training sites (benchmark.BENCH_SITES),
        # 100 segmenter steps and 150 SMD steps a site, 32 replay pairs a site from DDIM-10,
        # so ``benchmark --preset demo`` (finetune, smd-replay, smg x 3 seeds) takes ~2 min
        return replace_nested(
            run_preset("small"),
            steps_per_site=100,
            replay_per_site=32,
            log_every=50,
            smd=dict(train_steps=150, ddim_steps=10, replay_per_site=32),
        )
    if preset == "small":
        # CPU scale-down: 32 px slices, a 3-level U-Net, 150 steps a site; the SMD is
        # SMD_PRESETS["x0-16px"]: a (16, 32) diffusion U-Net at 16 px predicting x0, 400
        # steps a site, DDIM-20 ("leading" spacing) replay upsampled to 32 px.
        return replace_nested(
            full,
            image_size=32,
            channels=(8, 16, 32),
            num_res_units=1,
            lr=2e-3,
            steps_per_site=150,
            batch_size=16,
            replay_batch=16,
            replay_per_site=64,
            ewc_batches=4,
            log_every=25,
            smd=SMD_PRESETS["x0-16px"],
        )
    # tiny: seconds, for tests
    return replace_nested(
        full,
        image_size=16,
        channels=(4, 8),
        num_res_units=0,
        lr=2e-3,
        steps_per_site=6,
        batch_size=4,
        replay_batch=4,
        replay_per_site=4,
        ewc_batches=1,
        log_every=2,
        smd=dict(
            prediction_type="sample",
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            attention=False,
            train_steps=4,
            batch_size=4,
            lr=2e-3,
            ddim_steps=3,
            replay_per_site=4,
            num_train_timesteps=100,
            beta_schedule="squaredcos_cap_v2",
            timestep_spacing="leading",
        ),
    )


def with_smd_preset(cfg: RunConfig, name: str | None) -> RunConfig:
    """``cfg`` with the ``smd`` fields that :data:`SMD_PRESETS` ``[name]`` names set to its
    values (None: ``cfg`` as is); fields it does not name (``num_prompts``,
    ``num_train_timesteps``, ``mask_threshold``) keep ``cfg``'s values."""
    if name is None:
        return cfg
    if name not in SMD_PRESETS:
        raise InputError(
            "--smd-preset", f"unknown SMD preset {name!r}; choose from {', '.join(SMD_PRESETS)}"
        )
    return replace_nested(cfg, smd=SMD_PRESETS[name])


SMGConfig = RunConfig  # old name, kept for one release
preset_config = run_preset  # old name, kept for one release
