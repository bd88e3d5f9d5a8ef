"""Parallel Gradient Alignment (PGA) as first-order dual meta-objectives.

SMG-Learning aligns gradients in two directions at once (Xu et al., 2024, after
Zhang et al., MICCAI 2022):

- *orientational* alignment: the update on the current site should also lower the
  loss on previous sites (replayed samples), i.e. maximise ``<g_cur, g_rep>``;
- *arbitrary* alignment: gradients of any two of the available domains (current,
  replayed sites, shifted copies) should agree, i.e. maximise ``<g_mtr, g_mte>`` for a
  random meta-train / meta-test split of the domains.

With a virtual step ``θ' = θ - α d(g_A)`` (``d(g) = g`` for the SGD step), a Taylor
expansion gives ``L_B(θ') ≈ L_B(θ) - α <g_A, g_B>``, so minimising ``L_A(θ) + L_B(θ')``
aligns the two gradients without forming their inner product (MLDG, Li et al. 2018):

    L = L_cur(θ) + β_mem · L_rep(θ - α d(g_cur))
              + β_gen · [L_mtr(θ) + L_mte(θ - α d(g_mtr))]

The *alignment part* of a step is its gradient minus the gradient at ``α = 0`` (the
plain re-weighted loss ``L_cur + β_mem L_rep + β_gen [L_mtr + L_mte]``). For one pair
(A, B), with ``H`` the Hessians, the gradient of the explicit alignment term
``-α <g_A, g_B>`` is ``-α (H_B g_A + H_A g_B)``. Estimators (``options.estimator``):

- ``"exact"`` differentiates through the virtual step (``create_graph=True``):
  ``(I - α H_A) g_B(θ')``, whose alignment part is ``-α (H_B g_A + H_A g_B) + O(α²)``;
- ``"first_order"`` treats the virtual step as a constant (MLDG, no second
  derivatives): ``g_B(θ')``, whose alignment part is ``-α H_B g_A + O(α²)``: the
  ``-α H_A g_B`` half of the alignment gradient is lost;
- ``"symmetric"`` takes both roles, ``L_A(θ - α d(g_B)) + L_B(θ - α d(g_A))``, first
  order in each: ``g_A(θ - α g_B) + g_B(θ - α g_A)``, i.e. twice the mean of the two
  roles. Its alignment part is ``-α (H_B g_A + H_A g_B) + O(α²)``, the full
  alignment gradient, with first derivatives only (two more passes per pair).

Virtual steps (``options.virtual_step``, :func:`virtual_displacement`): ``"sgd"``: ``α g``;
``"adam"``: ``α g / (sqrt(v̂) + ε)`` with ``v̂`` the outer Adam's bias-corrected second
moment (the virtual step in the optimiser's geometry; DomainBed's MLDG steps a fresh
Adam clone, whose first step is ``α g / (|g| + ε)``, used here while Adam has no state);
``"normalized"``: ``α sqrt(P) g / ||g||``, a step of root-mean-square length ``α`` per
parameter (``P`` parameters), whatever the gradient's scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

from smg_learning.config import PGAConfig

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
VirtualStep = Literal["sgd", "adam", "normalized"]
ESTIMATORS: tuple[str, ...] = ("first_order", "symmetric", "exact")
VIRTUAL_STEPS: tuple[str, ...] = ("sgd", "adam", "normalized")


def _loss(
    model: nn.Module, loss_fn: LossFn, batch: Batch, params: dict[str, torch.Tensor] | None
) -> torch.Tensor:
    x, y = batch
    out = model(x) if params is None else functional_call(model, params, (x,))
    return loss_fn(out, y)


def _grads(
    loss: torch.Tensor, params: dict[str, torch.Tensor], create_graph: bool
) -> list[torch.Tensor]:
    grads = torch.autograd.grad(
        loss,
        list(params.values()),
        create_graph=create_graph,
        retain_graph=create_graph,
        allow_unused=True,
    )
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params.values())]


def virtual_params(
    params: dict[str, torch.Tensor], displacement: Sequence[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``θ' = θ - Δ`` as a name -> tensor dict for :func:`torch.func.functional_call`.

    ``Δ`` from :func:`virtual_displacement`; with a detached ``Δ`` the result depends
    on ``θ`` with identity Jacobian (first order).
    """
    return {n: p - d for (n, p), d in zip(params.items(), displacement)}


def virtual_displacement(
    grads: Sequence[torch.Tensor],
    inner_lr: float,
    kind: VirtualStep = "sgd",
    second_moment: Sequence[torch.Tensor | None] | None = None,
    eps: float = 1e-8,
) -> list[torch.Tensor]:
    """The virtual step ``Δ = α d(g)`` of each parameter tensor (``θ' = θ - Δ``).

    Args:
        grads: the gradient ``g`` of each parameter tensor.
        inner_lr: ``α``.
        kind: ``"sgd"``: ``α g``; ``"adam"``: ``α g / (sqrt(v̂) + eps)`` with
            ``second_moment`` the outer Adam's bias-corrected ``v̂`` per tensor (None, or a
            None entry: Adam has no state yet, and ``v̂ = g²`` as in a fresh Adam's first
            step, DomainBed's MLDG inner step); ``"normalized"``: ``α sqrt(P) g / ||g||``
            (root-mean-square step ``α`` per parameter, ``P`` parameters in all).
    """
    if kind == "sgd":
        return [inner_lr * g for g in grads]
    if kind == "adam":
        vs = list(second_moment) if second_moment is not None else [None] * len(grads)
        return [
            inner_lr * g / ((g.detach() ** 2 if v is None else v).sqrt() + eps)
            for g, v in zip(grads, vs)
        ]
    if kind == "normalized":
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        count = sum(g.numel() for g in grads)
        # a zero gradient gives a zero step, not 0/0
        scale = inner_lr * math.sqrt(count) / norm.clamp_min(torch.finfo(norm.dtype).tiny)
        return [scale * g for g in grads]
    raise ValueError(f"unknown virtual step {kind!r}; choose from {', '.join(VIRTUAL_STEPS)}")


def adam_second_moment(
    optimizer: torch.optim.Optimizer | None, params: Sequence[torch.Tensor]
) -> list[torch.Tensor | None] | None:
    """Adam's bias-corrected second moment ``v / (1 - β2^t)`` of each of ``params``.

    None entries for parameters without state (before the first step); None without
    an optimiser. Works for ``torch.optim.Adam`` and ``AdamW`` (``exp_avg_sq``).
    """
    if optimizer is None:
        return None
    beta2 = {
        id(p): group["betas"][1]
        for group in optimizer.param_groups
        if "betas" in group  # not an Adam: no second moment
        for p in group["params"]
    }
    out: list[torch.Tensor | None] = []
    for p in params:
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state or id(p) not in beta2:
            out.append(None)
            continue
        t = float(state["step"])
        out.append(state["exp_avg_sq"].detach() / (1 - beta2[id(p)] ** t))
    return out


def _cat(batches: Sequence[Batch]) -> Batch:
    if len(batches) == 1:
        return batches[0]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def _mean_loss(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    sizes: Sequence[int] | None,
    params: dict[str, torch.Tensor] | None,
) -> torch.Tensor:
    """The loss over several domains' samples together.

    Without ``sizes``, of the concatenated batch; with them, the mean of the
    per-domain losses weighted by ``sizes`` (equal for a mean of per-sample terms
    when ``sizes`` are the batch lengths; under DDP they are global sample counts).
    """
    if sizes is None:
        return _loss(model, loss_fn, _cat(batches), params)
    terms = [n * _loss(model, loss_fn, b, params) for n, b in zip(sizes, batches)]
    return sum(terms) / sum(sizes)


def _norm(vs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((v.detach() ** 2).sum() for v in vs))


@dataclass
class PGAGradient:
    """One PGA step's gradient, assembled explicitly (per parameter tensor).

    ``grad``: the step's gradient; ``at_zero``: the gradient of the same objective at
    ``α = 0`` (the plain re-weighted loss), computed only with ``measure=True`` (else
    None); ``value``: the objective's value; ``logs``: detached scalars.
    """

    value: torch.Tensor
    grad: list[torch.Tensor]
    at_zero: list[torch.Tensor] | None = None
    logs: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def alignment(self) -> list[torch.Tensor]:
        """The alignment part: ``grad - at_zero`` (needs ``measure=True``)."""
        if self.at_zero is None:
            raise ValueError("the alignment part needs measure=True")
        return [a - b for a, b in zip(self.grad, self.at_zero)]


def pga_gradient(
    model: nn.Module,
    loss_fn: LossFn,
    domains: Sequence[Batch],
    meta_test: Sequence[int] = (),
    replay: Batch | None = None,
    *,
    options: PGAConfig,
    second_moment: Sequence[torch.Tensor | None] | None = None,
    sizes: Sequence[int] | None = None,
    reduce: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
) -> PGAGradient:
    """The PGA gradient of one step (see :func:`pga_objective` for the arguments).

    ``options.measure``: also compute the gradient at ``α = 0`` (two more backward
    passes for ``first_order`` and ``exact``, none for ``symmetric``, which needs them
    anyway) and log ``align_norm = ||grad - at_zero||``, ``update_norm = ||grad||`` and
    their ratio ``align_share``. Under DDP these are this process's (before the final
    averaging).
    """
    inner_lr, beta_mem, beta_gen = options.inner_lr, options.beta_mem, options.beta_gen
    estimator, virtual_step, measure = options.estimator, options.virtual_step, options.measure
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    exact, symmetric = estimator == "exact", estimator == "symmetric"
    sync = reduce or (lambda grads: grads)

    def size(i: int) -> int:
        return len(domains[i][0]) if sizes is None else sizes[i]

    def sizes_of(idx: Sequence[int]) -> list[int] | None:
        return None if sizes is None else [sizes[i] for i in idx]

    def disp(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return virtual_displacement(grads, inner_lr, virtual_step, second_moment)

    def at_point(
        batches: Sequence[Batch], sz: Sequence[int] | None, step: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Loss and gradient at ``θ - step`` with ``step`` a constant (first order)."""
        point = {
            n: (p.detach() - d.detach()).requires_grad_(True)
            for (n, p), d in zip(params.items(), step)
        }
        lv = _mean_loss(model, loss_fn, batches, sz, point)
        return lv.detach(), _grads(lv, point, create_graph=False)

    def at_theta(batches: Sequence[Batch], sz: Sequence[int] | None) -> list[torch.Tensor]:
        lv = _mean_loss(model, loss_fn, batches, sz, None)
        return sync(_grads(lv, params, create_graph=False))

    def axpy(acc: list[torch.Tensor], a: float, xs: Sequence[torch.Tensor]) -> None:
        for k, x in enumerate(xs):
            acc[k] = acc[k] + a * x.detach()

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    l_cur = _loss(model, loss_fn, domains[0], None)
    logs: dict[str, torch.Tensor] = {"l_cur": l_cur.detach()}
    g_cur = sync(_grads(l_cur, params, create_graph=exact))
    # first_order / symmetric: the gradient is a sum of gradients at θ and at virtual
    # points, accumulated in G; exact: the objective's graph, differentiated at the end
    value = l_cur.detach()
    G = [g.detach().clone() for g in g_cur]
    G0 = [g.detach().clone() for g in g_cur] if measure else None
    total = l_cur

    if replay is not None and beta_mem != 0:
        if exact:
            l_mem = _loss(model, loss_fn, replay, virtual_params(params, disp(g_cur)))
            total = total + beta_mem * l_mem
        else:
            l_mem, g_mem = at_point([replay], None, disp(g_cur))
            value = value + beta_mem * l_mem
            axpy(G, beta_mem, g_mem)
        logs["l_mem"] = l_mem.detach()
        if symmetric or measure:
            g_rep = at_theta([replay], None)
            if G0 is not None:
                axpy(G0, beta_mem, g_rep)
        if symmetric:  # the other role: L_cur after a virtual step on the replay
            l_cur2, g_cur2 = at_point([domains[0]], None, disp(g_rep))
            value = value + beta_mem * (l_cur2 - l_cur.detach())
            axpy(G, beta_mem, [a - b for a, b in zip(g_cur2, g_cur)])

    test_idx = sorted(set(meta_test))
    train_idx = [i for i in range(len(domains)) if i not in test_idx]
    if test_idx and train_idx and beta_gen != 0:
        # L_mtr is the loss over the meta-train samples together: Dice+CE is a mean of
        # per-sample terms, so it is the sample-weighted mean of the per-domain losses,
        # and the current site's loss and gradient are reused rather than recomputed.
        others = [i for i in train_idx if i != 0]
        parts: list[tuple[int, torch.Tensor, list[torch.Tensor]]] = []
        if 0 in train_idx:
            parts.append((size(0), l_cur, g_cur))
        if others:
            l_rest = _mean_loss(
                model, loss_fn, [domains[i] for i in others], sizes_of(others), None
            )
            g_rest = sync(_grads(l_rest, params, create_graph=exact))
            parts.append((sum(size(i) for i in others), l_rest, g_rest))
        n_mtr = sum(n for n, _, _ in parts)
        l_mtr = sum(n * lv for n, lv, _ in parts) / n_mtr
        g_mtr = [sum(n * gs[k] for n, _, gs in parts) / n_mtr for k in range(len(g_cur))]
        mte = ([domains[i] for i in test_idx], sizes_of(test_idx))
        if exact:
            l_gen = _mean_loss(model, loss_fn, *mte, virtual_params(params, disp(g_mtr)))
            total = total + beta_gen * (l_mtr + l_gen)
        else:
            l_gen, g_gen = at_point(*mte, disp(g_mtr))
            value = value + beta_gen * (l_mtr.detach() + l_gen)
            axpy(G, beta_gen, g_mtr)
            axpy(G, beta_gen, g_gen)
        logs.update(l_mtr=l_mtr.detach(), l_gen=l_gen.detach())
        if symmetric or measure:
            g_mte = at_theta(*mte)
            if G0 is not None:
                axpy(G0, beta_gen, g_mtr)
                axpy(G0, beta_gen, g_mte)
        if symmetric:  # the other role: L_mtr after a virtual step on the meta-test
            l_mtr2, g_mtr2 = at_point(
                [domains[i] for i in train_idx], sizes_of(train_idx), disp(g_mte)
            )
            value = value + beta_gen * (l_mtr2 - l_mtr.detach())
            axpy(G, beta_gen, [a - b for a, b in zip(g_mtr2, g_mtr)])

    if exact:
        value = total.detach()
        G = [g.detach() for g in _grads(total, params, create_graph=False)]
    out = PGAGradient(value=value, grad=G, at_zero=G0, logs=logs)
    if measure:
        align, update = _norm(out.alignment), _norm(G)
        logs.update(align_norm=align, update_norm=update, align_share=align / update)
    return out


def pga_objective(
    model: nn.Module,
    loss_fn: LossFn,
    domains: Sequence[Batch],
    meta_test: Sequence[int] = (),
    replay: Batch | None = None,
    *,
    options: PGAConfig,
    second_moment: Sequence[torch.Tensor | None] | None = None,
    sizes: Sequence[int] | None = None,
    reduce: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """The PGA objective for one step; call ``.backward()`` on ``out["loss"]``.

    Args:
        model: the segmenter (any module that is a pure function of its parameters).
        loss_fn: ``(model output, targets) -> scalar``.
        domains: the available domains' batches; ``domains[0]`` is the current site.
            ``loss_fn`` must be a mean of per-sample terms (as Dice+CE is), so that a
            loss over several domains' samples is their sample-weighted mean.
        meta_test: indices into ``domains`` forming the meta-test side of the
            arbitrary objective (the rest is meta-train); empty skips that objective.
        replay: the previous sites' replayed batch for the orientational objective
            (None on the first site skips it).
        options: the PGA settings (:class:`~smg_learning.config.PGAConfig`, the run's
            ``pga`` section): ``inner_lr`` (α, the virtual step size), ``beta_mem`` and
            ``beta_gen`` (the weights of the orientational and arbitrary objectives),
            ``estimator`` (``"first_order"``, ``"symmetric"`` or ``"exact"``; module
            docstring), ``virtual_step`` (``"sgd"``, ``"adam"`` with ``second_moment``,
            see :func:`adam_second_moment`, or ``"normalized"``,
            :func:`virtual_displacement`) and ``measure`` (also log the alignment part's
            size, :func:`pga_gradient`). Its domain fields (``shifted_copies``,
            ``meta_test_domains``, ``shift_strength``) are the caller's: they say how
            ``domains`` and ``meta_test`` are built.
        second_moment: for ``options.virtual_step="adam"``: the outer Adam's bias-corrected
            second moment per parameter tensor (None: a fresh Adam's first step).
        sizes: for DDP: each domain's global sample count, weighting the domains in
            the meta-train and meta-test losses (default: the batch lengths; losses
            over several domains are then taken on their concatenation).
        reduce: for DDP: averages a list of gradients over the processes
            (:func:`smg_learning.distributed.mean_over_processes`), applied to the
            virtual-step gradients so that every process steps to the same ``θ'``.
            Each process's ``loss`` is then its share: its gradient, averaged over
            processes, is the gradient of the objective on the global batch.

    Returns:
        ``loss`` (its value is the objective; its gradient is PGA's), and the parts
        ``l_cur``, ``l_mem`` (replay at θ'), ``l_mtr``, ``l_gen`` (meta-test at θ''),
        detached; with ``measure``, ``align_norm``, ``update_norm``, ``align_share``.
    """
    out = pga_gradient(
        model,
        loss_fn,
        domains,
        meta_test,
        replay,
        options=options,
        second_moment=second_moment,
        sizes=sizes,
        reduce=reduce,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    # Σ<θ, G> - Σ<θ.detach(), G> is zero in value and has gradient G: the gradients
    # already computed are handed to backward() without a second pass through the model.
    lin = sum((p * g).sum() - (p.detach() * g).sum() for p, g in zip(params, out.grad))
    return {**out.logs, "loss": out.value + lin}


def split_domains(n: int, meta_test: int, generator: torch.Generator) -> list[int]:
    """Random meta-test indices: ``meta_test`` of ``n`` domains (none if ``n < 2``)."""
    if n < 2:
        return []
    k = min(meta_test, n - 1)
    return sorted(torch.randperm(n, generator=generator)[:k].tolist())


def shift_domain(
    x: torch.Tensor,
    generator: torch.Generator,
    strength: float = 1.0,
    share: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """A shifted copy of a batch ``(B, C, H, W)`` in [0, 1]: one random style for the batch.

    Gamma (intensity transfer), contrast, brightness and Gaussian noise, in the
    spirit of the site shifts of :class:`medcommon.synthetic.SiteStyle`.
    ``share = (rank, world)``: ``x`` is process ``rank``'s contiguous share of a
    global batch of ``world * B`` (DDP); the noise is drawn for the global batch
    and this share's rows kept, so the processes together shift it as one process would.
    """

    def u(lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * torch.rand((), generator=generator))

    gamma = float(torch.exp(torch.tensor(u(-0.6, 0.6) * strength)))
    contrast = float(torch.exp(torch.tensor(u(-0.4, 0.3) * strength)))
    bright = u(-0.15, 0.15) * strength
    noise = u(0.0, 0.05) * strength
    out = x.clamp(0, 1) ** gamma
    out = (out - 0.5) * contrast + 0.5 + bright
    rank, world = share
    b = x.shape[0]
    eps = torch.randn((b * world, *x.shape[1:]), generator=generator)[rank * b : (rank + 1) * b]
    out = out + noise * eps.to(x.device)
    return out.clamp(0, 1)
