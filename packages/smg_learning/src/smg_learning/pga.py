"""Parallel Gradient Alignment (PGA) as first-order dual meta-objectives.

SMG-Learning aligns gradients in two directions at once (Xu et al., 2024, after
Zhang et al., MICCAI 2022):

- *orientational* alignment: the update on the current site should also lower the
  loss on previous sites (replayed samples), i.e. maximise ``<g_cur, g_rep>``;
- *arbitrary* alignment: gradients of any two of the available domains (current,
  replayed sites, shifted copies) should agree, i.e. maximise ``<g_mtr, g_mte>`` for a
  random meta-train / meta-test split of the domains.

With a virtual SGD step ``θ' = θ - α ∇L_A(θ)``, a first-order Taylor expansion gives
``L_B(θ') ≈ L_B(θ) - α <∇L_A, ∇L_B>``, so minimising ``L_A(θ) + L_B(θ')`` aligns the two
gradients without forming their inner product (MLDG, Li et al. 2018). The objective is

    L = L_cur(θ) + β_mem · L_rep(θ - α ∇L_cur(θ))
              + β_gen · [L_mtr(θ) + L_mte(θ - α ∇L_mtr(θ))]

``order="first"`` treats the virtual-step gradients as constants (no second
derivatives): ``∇_θ L_B(θ - α g_A) ≈ ∇L_B(θ')``. ``order="exact"`` differentiates
through the virtual step with second-order autograd (``create_graph=True``), which
equals the gradient of the explicit inner-product objective
``L_A + L_B - α <∇L_A, ∇L_B>`` up to O(α²); it is here for the cost comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def virtual_step(
    params: dict[str, torch.Tensor], grads: Sequence[torch.Tensor], inner_lr: float
) -> dict[str, torch.Tensor]:
    """``θ' = θ - α g`` as a name -> tensor dict for :func:`torch.func.functional_call`.

    With detached ``grads`` the result depends on ``θ`` with identity Jacobian (first order).
    """
    return {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads)}


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


def pga_objective(
    model: nn.Module,
    loss_fn: LossFn,
    domains: Sequence[Batch],
    meta_test: Sequence[int] = (),
    replay: Batch | None = None,
    *,
    inner_lr: float,
    beta_mem: float = 1.0,
    beta_gen: float = 1.0,
    order: Literal["first", "exact"] = "first",
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
        inner_lr: α, the virtual step size.
        beta_mem, beta_gen: weights of the orientational and arbitrary objectives.
        order: ``"first"`` (no second derivatives) or ``"exact"``.
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
        ``l_cur``, ``l_mem`` (replay at θ'), ``l_mtr``, ``l_gen`` (meta-test at θ''), detached.
    """
    exact = order == "exact"
    sync = reduce or (lambda grads: grads)

    def size(i: int) -> int:
        return len(domains[i][0]) if sizes is None else sizes[i]

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    l_cur = _loss(model, loss_fn, domains[0], None)
    logs: dict[str, torch.Tensor] = {"l_cur": l_cur.detach()}
    if exact:
        total = l_cur
        g_cur = sync(_grads(l_cur, params, create_graph=True))
    else:
        g_cur = sync(_grads(l_cur, params, create_graph=False))
        # gradient contributions evaluated at θ, added through a linear surrogate below
        at_theta = [g.clone() for g in g_cur]
        value = l_cur.detach()
        total = None

    def add(term: torch.Tensor) -> None:
        nonlocal total
        total = term if total is None else total + term

    if replay is not None and beta_mem != 0:
        l_mem = _loss(model, loss_fn, replay, virtual_step(params, g_cur, inner_lr))
        add(beta_mem * l_mem)
        logs["l_mem"] = l_mem.detach()

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
                model,
                loss_fn,
                [domains[i] for i in others],
                None if sizes is None else [sizes[i] for i in others],
                None,
            )
            g_rest = sync(_grads(l_rest, params, create_graph=exact))
            parts.append((sum(size(i) for i in others), l_rest, g_rest))
        n_mtr = sum(n for n, _, _ in parts)
        l_mtr = sum(n * lv for n, lv, _ in parts) / n_mtr
        g_mtr = [sum(n * gs[k] for n, _, gs in parts) / n_mtr for k in range(len(g_cur))]
        l_gen = _mean_loss(
            model,
            loss_fn,
            [domains[i] for i in test_idx],
            None if sizes is None else [sizes[i] for i in test_idx],
            virtual_step(params, g_mtr, inner_lr),
        )
        add(beta_gen * l_gen)
        logs.update(l_mtr=l_mtr.detach(), l_gen=l_gen.detach())
        if exact:
            add(beta_gen * l_mtr)
        else:
            value = value + beta_gen * l_mtr.detach()
            at_theta = [a + beta_gen * g for a, g in zip(at_theta, g_mtr)]

    if not exact:
        # Σ<θ, G> - Σ<θ.detach(), G> is zero in value and has gradient G: the
        # meta-train gradients already computed are reused, not backpropagated again.
        lin = sum((p * g).sum() - (p.detach() * g).sum() for p, g in zip(params.values(), at_theta))
        add(value + lin)
    logs["loss"] = total
    return logs


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
