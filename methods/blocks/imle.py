"""Perturb-and-MAP matching with the IMLE gradient, as in LVM-Med's Algorithm 1.

Forward: ṽ = GM(c^v + ε, c^e + ε'), and the Hamming loss of ṽ against the identity matching.
Backward: one more solve on the target costs (c^v + ε) - s ∇_ṽ L = (c^v + ε) + s (2 v* - 1) (the
loss depends on vertices only, so edge costs keep their noise), and the gradient is the difference
of the two solutions over λ. How the shift s and the scale relate to λ and to the incoming
gradient g_b of instance b's loss (``convention``):

- ``batch_mean`` (BB-GM / LPMP's GraphMatchingSolver): the solver receives λ times the incoming
  gradient, s = λ g_b; the gradient is (ṽ - v_λ) / λ and is not multiplied by g_b again. With a loss
  averaged over G instances, g_b = 1/G, so the effective shift is λ/G.
- ``per_instance``: s = λ whatever the batch; the gradient is g_b (ṽ - v_λ) / λ.

∂L/∂c^e is the same difference taken on the paid edge pairs, edges(ṽ) - edges(v_λ). Instances whose
shifted problem provably has the identity as its only optimum (graph_matching.identity_is_optimal)
get v_λ = I without a solve; instances with s = 0 have the forward problem as target, so v_λ = ṽ.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from medssl_bench.methods.blocks.graph_matching import edge_indicator, identity_is_optimal

# (unary, edge costs or None, edges_s or None, edges_t or None) -> 0/1 matching, batched over instances
Solver = Callable[[Tensor, Tensor | None, Tensor | None, Tensor | None], Tensor]
CONVENTIONS = ("batch_mean", "per_instance")
EULER_GAMMA = 0.5772156649  # mean of Gumbel(0, 1)


def gumbel_noise(shape, device, generator: torch.Generator, scale: float = 1.0, centered: bool = False) -> Tensor:
    """Gumbel(0, 1) * scale from `generator`, the perturbation ε; `centered` subtracts its mean first."""
    uniform = torch.rand(shape, device=device, generator=generator).clamp_(1e-10, 1 - 1e-10)
    gumbel = -torch.log(-torch.log(uniform))
    if centered:  # zero mean: otherwise every paid edge pair earns +0.577 on average
        gumbel = gumbel - EULER_GAMMA
    return gumbel * scale


def hamming(v: Tensor, gold: Tensor) -> Tensor:
    """Eq. 5, per instance: ṽ·(1 - v*) + v*·(1 - ṽ), summed over entries. (B,)"""
    return (v * (1 - gold) + gold * (1 - v)).sum((1, 2))


def target_matching(costs_u: Tensor, costs_e: Tensor | None, edges_s: Tensor | None, edges_t: Tensor | None,
                    shift: Tensor, v: Tensor, solve: Solver, skip_proven: bool = True) -> Tensor:
    """argmax of the problem (costs_u + shift (2 I - 1), costs_e) per instance; shift (B,).

    Solves only the instances that need it: shift 0 keeps the forward solution v (same problem), and
    with `skip_proven` an instance whose identity passes identity_is_optimal gets I unsolved."""
    gold = torch.eye(v.shape[-1], device=v.device, dtype=v.dtype).expand_as(v)
    shifted = costs_u + shift.to(costs_u.dtype)[:, None, None] * (2 * gold - 1).to(costs_u.dtype)
    target = torch.where((shift == 0)[:, None, None], v, gold)
    todo = shift != 0
    if skip_proven:
        todo &= ~identity_is_optimal(shifted, costs_e, edges_s, edges_t)
    rows = todo.nonzero().flatten()
    if len(rows):
        pick = lambda x: None if x is None else x[rows]  # noqa: E731
        target = target.clone()
        target[rows] = solve(shifted[rows], pick(costs_e), pick(edges_s), pick(edges_t)).to(v.dtype)
    return target


class MatchingHammingIMLE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unary: Tensor, edge_aff: Tensor | None, noise_unary: Tensor, noise_edge: Tensor | None,
                edges_s: Tensor | None, edges_t: Tensor | None, lam: float, solve: Solver, solve_target: Solver,
                convention: str, skip_proven: bool):
        gold = torch.eye(unary.shape[-1], device=unary.device, dtype=unary.dtype).expand_as(unary)
        costs_u = (unary + noise_unary).detach()
        costs_e = None if edge_aff is None else (edge_aff + noise_edge).detach()
        v = solve(costs_u, costs_e, edges_s, edges_t).to(unary.dtype)
        ctx.save_for_backward(costs_u, v)
        ctx.costs_e, ctx.edges, ctx.lam, ctx.solve_target = costs_e, (edges_s, edges_t), lam, solve_target
        ctx.convention, ctx.skip_proven = convention, skip_proven
        ctx.mark_non_differentiable(v)
        return hamming(v, gold), v

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_v: Tensor):
        costs_u, v = ctx.saved_tensors
        grad_loss = grad_loss.float()
        if ctx.convention == "batch_mean":  # LPMP: costs + λ·(dL/dṽ); gradient -(paid - paid')/λ
            shift, scale = ctx.lam * grad_loss, torch.full_like(grad_loss, 1.0 / ctx.lam)
        else:
            shift, scale = torch.full_like(grad_loss, float(ctx.lam)), grad_loss / ctx.lam
        v_target = target_matching(costs_u, ctx.costs_e, *ctx.edges, shift, v, ctx.solve_target, ctx.skip_proven)
        scale = scale.to(v.dtype)[:, None, None]
        grad_unary = (v - v_target) * scale
        grad_edge = None
        if ctx.costs_e is not None and ctx.needs_input_grad[1]:
            grad_edge = (edge_indicator(v, *ctx.edges) - edge_indicator(v_target, *ctx.edges)) * scale
        return grad_unary, grad_edge, None, None, None, None, None, None, None, None, None


def imle_hamming_matching(unary: Tensor, edge_aff: Tensor | None, noise_unary: Tensor, noise_edge: Tensor | None,
                          lam: float, solve: Solver, edges_s: Tensor | None = None, edges_t: Tensor | None = None,
                          solve_target: Solver | None = None, convention: str = "batch_mean",
                          skip_proven: bool = True):
    """(per-instance Hamming loss (B,), matching ṽ (B, N, N)); gradients reach unary and edge_aff.

    `edges_s`/`edges_t` (B, E, 2) are the graphs' directed edges (None without an edge term).
    `solve_target` solves the backward (shifted) problem; default `solve`. With a large shift that
    problem is dominated by its unary term, so a cheaper solver is enough there."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown lambda convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    return MatchingHammingIMLE.apply(unary, edge_aff, noise_unary, noise_edge, edges_s, edges_t, lam, solve,
                                     solve_target or solve, convention, skip_proven)
