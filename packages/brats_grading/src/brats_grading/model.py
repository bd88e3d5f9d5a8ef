"""The grading network: MC3 branches with dual attention, fused across modalities.

Input is always the full ``(B, 4, D, H, W)`` stack in the order t1, t1ce, t2, flair;
``ModelConfig.inputs`` picks how it is used:

- ``single``: one branch on ``modality`` (``(B, 1, D, H, W)``);
- ``early``: one branch on the stacked channels of ``modalities`` (early fusion; all four
  by default);
- ``branches``: one branch per modality; the fused probability is
  ``p = w_p p_primary + (1 - w_p) / |S| sum_s p_s`` (``fusion="primary-weighted"``,
  ``w_p = primary_weight``), ``p = sum_m w_m p_m`` with reliability weights fitted on
  an inner validation split (``fusion="reliability"``, ``w = branch_weights``), or the
  plain mean of the branch probabilities (``fusion="mean"``, late fusion).

Each branch: MC3 backbone -> dual attention (optional) -> global average pool ->
dropout -> linear. ``forward`` returns ``logits`` (for ``branches``: the log of the
fused probabilities, so ``softmax(logits)`` is the fused prediction), and per branch
its ``branch_logits``, pooled ``features`` ``(B, C)``, the features that guidance
aligns (``align_features``: ``features``, or their projection when
``ModelConfig.align_head``), the pooled output of the second-to-last MC3 layer
(``mid_features`` ``(B, C_mid)``, for intermediate guidance) and ``attention`` maps.
"""

from __future__ import annotations

import torch
from torch import nn

from brats_grading.attention import DualAttention
from brats_grading.config import MODALITIES, ModelConfig
from brats_grading.mc3 import MC3Backbone

_BRANCH_OFFSET = {"t1": 0, "t1ce": 1, "t2": 2, "flair": 3, "early": 4}


class Branch(nn.Module):
    """One modality's (or the early-fusion stack's) classifier."""

    def __init__(self, cfg: ModelConfig, in_channels: int) -> None:
        super().__init__()
        self.backbone = MC3Backbone(
            in_channels,
            cfg.stem_channels,
            cfg.widths,
            cfg.blocks,
            cfg.full3d_layers,
            cfg.checkpoint_activations,
        )
        channels = self.backbone.out_channels
        self.attention = DualAttention(channels, cfg.attention_reduction) if cfg.attention else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(channels, cfg.num_classes)
        # A projection for feature alignment: a secondary matches the teacher's features
        # through it, so it is not forced into the teacher's own channel layout.
        # Identity at the start: training begins exactly where direct alignment does.
        self.align = None
        if cfg.align_head:
            self.align = nn.Linear(channels, channels)
            with torch.no_grad():
                self.align.weight.copy_(torch.eye(channels))
                self.align.bias.zero_()

    def forward(self, x: torch.Tensor) -> dict:
        layers = self.backbone.forward_layers(x)
        f = layers[-1]  # (B, C, D, H', W')
        mid = layers[-2] if len(layers) > 1 else layers[-1]
        attn: dict[str, torch.Tensor] = {}
        if self.attention is not None:
            f, attn = self.attention(f)
        pooled = f.mean(dim=(2, 3, 4))  # (B, C)
        return {
            "logits": self.fc(self.dropout(pooled)),
            "features": pooled,
            "align_features": pooled if self.align is None else self.align(pooled),
            "mid_features": mid.mean(dim=(2, 3, 4)),  # (B, C_mid)
            "attention": attn,
        }


class GradingNet(nn.Module):
    """HGG-vs-LGG classifier over the four BraTS sequences (see the module docstring)."""

    config_class = ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.inputs == "single":
            names = [config.modality]
        elif config.inputs == "early":
            names = ["early"]
        else:
            names = list(config.modalities)
        # Each branch is initialised from its own sub-seed (one draw from the global RNG
        # plus a fixed per-modality offset), so the t1ce branch of a four-branch model
        # starts from exactly the weights of the single-t1ce model built after the same
        # seed: the comparison of methods is paired, not confounded by initialisation.
        base = int(torch.randint(0, 2**31 - 1, ()).item())
        branches = {}
        for n in names:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(base + _BRANCH_OFFSET[n])
                branches[n] = Branch(config, len(config.modalities) if n == "early" else 1)
        self.branches = nn.ModuleDict(branches)

    @property
    def branch_names(self) -> list[str]:
        return list(self.branches)

    def secondary_names(self) -> list[str]:
        return [n for n in self.branches if n != self.config.primary]

    def branch_input(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The channels of ``x`` (``(B, 4, D, H, W)``) that branch ``name`` reads.

        The early-fusion branch reads the channels of ``config.modalities`` (all four
        by default), in that order.
        """
        if name == "early":
            if tuple(self.config.modalities) == MODALITIES:
                return x
            return x[:, [MODALITIES.index(m) for m in self.config.modalities]]
        i = MODALITIES.index(name)
        return x[:, i : i + 1]

    def run_branch(self, x: torch.Tensor, name: str) -> dict:
        return self.branches[name](self.branch_input(x, name))

    def fusion_weights(self, names: list[str]) -> dict[str, float]:
        """Weights of the branch probabilities in the fused prediction (sum to 1)."""
        cfg = self.config
        if len(names) == 1:
            return {names[0]: 1.0}
        if cfg.fusion == "reliability" and cfg.branch_weights:
            fitted = dict(zip(cfg.modalities, cfg.branch_weights, strict=True))
            total = sum(fitted[n] for n in names)
            if total > 0:
                return {n: fitted[n] / total for n in names}
        if cfg.fusion != "primary-weighted" or cfg.primary not in names:
            return {n: 1.0 / len(names) for n in names}
        rest = (1.0 - cfg.primary_weight) / (len(names) - 1)
        return {n: cfg.primary_weight if n == cfg.primary else rest for n in names}

    def fuse(self, branch_logits: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fused log-probabilities ``(B, K)`` from per-branch logits."""
        names = list(branch_logits)
        if len(names) == 1:
            return branch_logits[names[0]]
        weights = self.fusion_weights(names)
        prob = sum(weights[n] * torch.softmax(branch_logits[n], dim=1) for n in names)
        return torch.log(prob.clamp_min(1e-12))

    def forward(self, x: torch.Tensor, branches: list[str] | None = None) -> dict:
        """``x``: ``(B, 4, D, H, W)``. Returns logits ``(B, K)`` and per-branch outputs.

        ``branches`` runs only those branches (training stages); the fused logits then
        combine just them, with the fusion weights renormalised.
        """
        names = self.branch_names if branches is None else list(branches)
        outs = {n: self.run_branch(x, n) for n in names}
        branch_logits = {n: o["logits"] for n, o in outs.items()}
        return {
            "logits": self.fuse(branch_logits),
            "branch_logits": branch_logits,
            "features": {n: o["features"] for n, o in outs.items()},
            "align_features": {n: o["align_features"] for n, o in outs.items()},
            "mid_features": {n: o["mid_features"] for n, o in outs.items()},
            "attention": {n: o["attention"] for n, o in outs.items()},
        }
