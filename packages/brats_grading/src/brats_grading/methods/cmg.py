"""``cmg``: cross-modality guidance (Xu et al., arXiv 2401.09029), and its two ablations.

Stage 1 (``primary``) trains the primary branch with CE. Stage 2 (``guided``)
trains the secondary branches with CE plus distillation from, and feature
alignment to, the primary (see :mod:`brats_grading.losses`); with
``guidance.freeze_primary`` the primary is a fixed teacher: eval mode (no BN
statistics updates, no dropout), no gradient.

- ``cmg-no-attention``: the same without the dual attention;
- ``cmg-no-guidance``: the same stages with ``kd_weight = feature_weight = 0``;
- ``cmg-proj`` and ``cmg-mid`` (issue #11, not in the paper): feature alignment
  through a learned projection head, and alignment of intermediate features as well,
  two attempts at making guidance matter, run on the benchmark grid with the
  package's default weights (nothing tuned on test folds).
"""

from __future__ import annotations

import torch
from torch import nn

from brats_grading import losses
from brats_grading.config import RunConfig
from brats_grading.losses import weighted_ce
from brats_grading.methods.base import Stage, StepFn, branch_params, ce_step, register, unwrap
from brats_grading.model import GradingNet
from medcommon.config import replace_nested

_SHUFFLE_SEED = 21
"""Seeds the within-class partners of ``guidance.teacher=shuffled`` (with the step), a
generator of its own so the control draws nothing from the RNG that dropout uses."""


def guided_step(cfg: RunConfig, net: GradingNet, weight: torch.Tensor | None) -> StepFn:
    """Stage 2 of CMG: the primary branch guides the secondaries (see :mod:`.losses`)."""
    primary = cfg.model.primary
    secondary = net.secondary_names()
    g = cfg.guidance

    def step(model: nn.Module, batch: dict, ctx) -> dict:
        x, y = batch["x"], batch["y"]
        w = None if weight is None else weight.to(x.device)
        if g.freeze_primary:
            branch = unwrap(model).branches[primary]
            branch.eval()  # a fixed teacher: no BN statistics updates, no dropout
            with torch.no_grad():
                teacher = model(x, branches=[primary])
        else:
            teacher = model(x, branches=[primary])
        student = model(x, branches=secondary)
        # The controls of issue #21 (guidance.teacher); "case" passes the teacher through.
        generator = None
        if g.teacher == "shuffled":
            generator = torch.Generator().manual_seed(
                _SHUFFLE_SEED + 1009 * ctx.step + ctx.micro_step
            )
        t_logits, t_features = losses.control_teacher(
            teacher["branch_logits"][primary], teacher["features"][primary], y,
            g.teacher, g.temperature, generator,
        )  # fmt: skip
        out = losses.guidance_loss(
            t_logits,
            t_features,
            student["branch_logits"],
            student["align_features"],  # the features, or their projection (align_head)
            y,
            temperature=g.temperature,
            kd_weight=g.kd_weight,
            feature_weight=g.feature_weight,
            ce_weight=g.ce_weight,
            class_weight=w,
            mid_weight=g.mid_weight,
            primary_mid=teacher["mid_features"][primary],
            secondary_mid=student["mid_features"],
        )
        if not g.freeze_primary:
            out["loss"] = out["loss"] + weighted_ce(teacher["branch_logits"][primary], y, w)
        return out

    return step


def cmg_stages(cfg: RunConfig, net: GradingNet, weight: torch.Tensor | None) -> list[Stage]:
    """``primary`` (CE on the primary branch), then ``guided`` (:func:`guided_step`)."""
    primary = cfg.model.primary
    second = net.secondary_names()
    trainable = second if cfg.guidance.freeze_primary else [primary, *second]
    return [
        Stage("primary", branch_params(net, [primary]), ce_step(weight, [primary]), cfg.primary_steps, [primary], "ce"),
        Stage("guided", branch_params(net, trainable), guided_step(cfg, net, weight), cfg.steps, trainable),
    ]  # fmt: skip


_CMG_MODEL = {"inputs": "branches", "fusion": "reliability"}

register(
    "cmg",
    "cross-modality guidance + dual attention, two stages, reliability-weighted fusion",
    lambda c: replace_nested(c, model=_CMG_MODEL),
    cmg_stages,
)
register(
    "cmg-no-attention",
    "cmg without the dual attention",
    lambda c: replace_nested(c, model={**_CMG_MODEL, "attention": False}),
    cmg_stages,
)
register(
    "cmg-no-guidance",
    "cmg with the distillation and alignment weights set to 0",
    lambda c: replace_nested(
        c, model=_CMG_MODEL, guidance={"kd_weight": 0.0, "feature_weight": 0.0}
    ),
    cmg_stages,
)
register(
    "cmg-proj",
    "cmg, aligning features through a learned projection head (not in the paper)",
    lambda c: replace_nested(c, model={**_CMG_MODEL, "align_head": True}),
    cmg_stages,
)
register(
    "cmg-mid",
    "cmg, also aligning the intermediate (second-to-last layer) features (not in the paper)",
    lambda c: replace_nested(c, model=_CMG_MODEL, guidance={"mid_weight": 1.0}),
    cmg_stages,
)
