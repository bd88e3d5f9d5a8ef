"""Losses: class-weighted cross-entropy and the cross-modality guidance terms.

With primary logits ``z_p``, secondary logits ``z_s``, temperature ``T`` and pooled
features ``f``:

- soft-label distillation (Hinton et al. 2015):
  ``L_kd(s) = T^2 * KL( softmax(z_p / T) || softmax(z_s / T) )``, mean over the batch;
- feature alignment: ``L_fa(s) = mean_b || f_s / |f_s| - f_p / |f_p| ||^2``;
- guided stage-2 objective over the secondary set ``S``:
  ``L = 1/|S| sum_s [ ce_weight * CE_w(z_s, y) + kd_weight * L_kd(s) + feature_weight * L_fa(s)
  + mid_weight * L_fa^mid(s) ]`` (+ ``CE_w(z_p, y)`` when the primary is not frozen),
  where ``L_fa^mid`` aligns the pooled intermediate features (0 in the paper).

The primary's logits and features are detached: guidance flows from primary to
secondary only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_ce(
    logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy with per-class weights, normalised by the summed weights of the batch."""
    return F.cross_entropy(logits, y, weight=weight)


def distillation_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch.

    ``student``, ``teacher``: logits ``(B, K)``; the teacher is detached.
    """
    t = temperature
    log_q = F.log_softmax(student / t, dim=1)
    log_p = F.log_softmax(teacher.detach() / t, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return kl.mean() * t * t


def feature_alignment(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of L2-normalised features ``(B, C)`` (= ``2 - 2 cos``)."""
    s = F.normalize(student, dim=1)
    p = F.normalize(teacher.detach(), dim=1)
    return (s - p).square().sum(dim=1).mean()


def control_teacher(
    logits: torch.Tensor,
    features: torch.Tensor,
    y: torch.Tensor,
    mode: str,
    temperature: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's ``(B, K)`` logits and ``(B, C)`` features as a control sees them.

    ``case``: unchanged (the paper). ``shuffled``: case i gets the outputs of another
    case of its own class in the batch, a random cyclic derangement within each class
    (a class with one case in the batch keeps its own). ``class-mean``: every case gets
    its class's mean tempered distribution ``mean_i softmax(z_i / T)`` (returned as
    logits ``T log p``, so ``softmax(. / T)`` gives it back) and its class's mean
    feature: label smoothing at the teacher's strength, no case information.
    """
    if mode == "case":
        return logits, features
    logits, features = logits.detach(), features.detach()
    out_logits, out_features = logits.clone(), features.clone()
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        if mode == "shuffled":
            if idx.numel() < 2:
                continue
            order = idx[torch.randperm(idx.numel(), generator=generator).to(idx.device)]
            partner = torch.roll(order, 1)  # order[k] takes order[k-1]: nobody keeps its own
            out_logits[order] = logits[partner]
            out_features[order] = features[partner]
        elif mode == "class-mean":
            p = F.softmax(logits[idx] / temperature, dim=1).mean(dim=0)
            out_logits[idx] = temperature * p.clamp_min(1e-12).log()
            out_features[idx] = features[idx].mean(dim=0)
        else:
            raise ValueError(f"unknown teacher control {mode!r}")
    return out_logits, out_features


def guidance_loss(
    primary_logits: torch.Tensor,
    primary_features: torch.Tensor,
    secondary_logits: dict[str, torch.Tensor],
    secondary_features: dict[str, torch.Tensor],
    y: torch.Tensor,
    *,
    temperature: float,
    kd_weight: float,
    feature_weight: float,
    ce_weight: float = 1.0,
    class_weight: torch.Tensor | None = None,
    mid_weight: float = 0.0,
    primary_mid: torch.Tensor | None = None,
    secondary_mid: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The stage-2 guided objective (module docstring); returns ``loss`` and its parts.

    ``primary_mid`` ``(B, C_mid)`` and ``secondary_mid`` (per branch) are the pooled
    intermediate features, needed only when ``mid_weight`` > 0.
    """
    names = list(secondary_logits)
    ce = sum(weighted_ce(secondary_logits[n], y, class_weight) for n in names) / len(names)
    kd = sum(distillation_kl(secondary_logits[n], primary_logits, temperature) for n in names)
    fa = sum(feature_alignment(secondary_features[n], primary_features) for n in names)
    kd, fa = kd / len(names), fa / len(names)
    loss = ce_weight * ce + kd_weight * kd + feature_weight * fa
    out = {"ce": ce.detach(), "kd": kd.detach(), "fa": fa.detach()}
    if mid_weight > 0:
        if primary_mid is None or secondary_mid is None:
            raise ValueError("mid_weight > 0 needs primary_mid and secondary_mid")
        mid = sum(feature_alignment(secondary_mid[n], primary_mid) for n in names) / len(names)
        loss = loss + mid_weight * mid
        out["mid"] = mid.detach()
    return {"loss": loss, **out}
