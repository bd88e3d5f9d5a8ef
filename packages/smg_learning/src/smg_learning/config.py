"""Configuration: frozen dataclasses with the paper's (or its predecessors') defaults.

``RunConfig`` is everything ``smg-learning train`` uses; nested ``pga`` and ``smd``
sections hold the Parallel Gradient Alignment and Site-Modulated Diffusion
settings. Presets are data files, ``packages/smg_learning/configs/<preset>.yaml``
(:mod:`medcommon.presets`): ``tiny`` (unit tests, seconds), ``demo`` (the central claim
in ~2 minutes), ``small`` (the CPU benchmark, minutes), ``full`` (the paper-scale
setting for a GPU and the public data: the defaults below). Each holds a ``run``
section (a :class:`RunConfig`), a ``synth`` section (:class:`smg_learning.synth.SynthSpec`)
and a ``benchmark`` section (:class:`smg_learning.benchmark.BenchConfig`).
Override any field with ``--config F.yaml`` or ``--set key=value`` (dotted for
nested fields, e.g. ``--set pga.inner_lr=0.02``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medcommon.errors import InputError
from medcommon.presets import Presets

#: the package's preset files (``configs/*.yaml``)
PRESETS = Presets("smg_learning")

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
    ``first_order``/``exact``). The object itself is the ``options`` of
    :func:`smg_learning.pga.pga_objective`; ``shifted_copies``, ``meta_test_domains``
    and ``shift_strength`` say how the strategy builds the domains it passes.
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
    # what a shifted copy is: "style" (gamma, contrast, brightness, noise: never flips
    # polarity) or "transfer" (a fresh intensity transfer curve, smg_learning.transfer:
    # the family of synth's "curves" sites, polarity changes included; issue #22)
    shift: Literal["style", "transfer"] = "style"


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
    # one prompt for every site (issue #22): the control for site modulation. The SMD
    # trains and samples every site with prompt 0, so its replay of each earlier site is
    # a draw from the mixture of the sites it has seen
    shared_prompt: bool = False


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
    # the mechanism's own signal (issue #22): every probe_every steps of a stage with
    # replay, the cosines between the gradients of fixed probe batches (probe_size
    # slices: the current site, the replay memory, a shifted copy of the current site).
    # Measured on the side: training is the same with or without (0: off)
    probe_every: int = 0
    probe_size: int = 16

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
            # 0 is the alpha = 0 ablation (smg-alpha0): PGA without its alignment step
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
            ("smd.lr", self.smd.lr > 0, "> 0"),
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


def run_preset(name: str) -> RunConfig:
    """The ``run`` section of preset ``name`` (``configs/<name>.yaml``: tiny, demo, small, full)."""
    return PRESETS.section(name, "run", RunConfig)
