"""Perturb-and-MAP matching with the IMLE gradient, as in LVM-Med's Algorithm 1.

Forward: ṽ = GM(c^v + ε, c^e + ε'), and the Hamming loss of ṽ against the identity matching.
Backward: one more solve on the target costs (c^v + ε) - λ ∇_ṽ L = (c^v + ε) + λ (2 v* - 1) (the
loss depends on vertices only, so edge costs keep their noise), and

    ∂L/∂c^v ≈ (ṽ - v_λ) / λ,    ∂L/∂c^e ≈ (edges(ṽ) - edges(v_λ)) / λ

per instance, scaled by the incoming gradient of that instance's loss. λ acts per instance, so
averaging the loss over a batch does not shrink the perturbation (unlike passing λ times the
batch-averaged gradient).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Solver = Callable[[Tensor, Tensor | None], Tensor]  # (unary, edge costs or None) -> 0/1 matching


def hamming(v: Tensor, gold: Tensor) -> Tensor:
    """Eq. 5, per instance: ṽ·(1 - v*) + v*·(1 - ṽ), summed over entries. (B,)"""
    return (v * (1 - gold) + gold * (1 - v)).sum((1, 2))


class MatchingHammingIMLE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unary: Tensor, edge_aff: Tensor | None, noise_unary: Tensor, noise_edge: Tensor | None,
                lam: float, solve: Solver, edges_of: Callable[[Tensor], Tensor] | None, solve_target: Solver):
        gold = torch.eye(unary.shape[-1], device=unary.device, dtype=unary.dtype).expand_as(unary)
        costs_u = (unary + noise_unary).detach()
        costs_e = None if edge_aff is None else (edge_aff + noise_edge).detach()
        v = solve(costs_u, costs_e).to(unary.dtype)
        ctx.save_for_backward(costs_u, v)
        ctx.costs_e, ctx.lam, ctx.solve_target, ctx.edges_of = costs_e, lam, solve_target, edges_of
        ctx.mark_non_differentiable(v)
        return hamming(v, gold), v

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_v: Tensor):
        costs_u, v = ctx.saved_tensors
        gold = torch.eye(v.shape[-1], device=v.device, dtype=v.dtype).expand_as(v)
        v_target = ctx.solve_target(costs_u + ctx.lam * (2 * gold - 1), ctx.costs_e).to(v.dtype)
        scale = (grad_loss / ctx.lam)[:, None, None]
        grad_unary = (v - v_target) * scale
        grad_edge = None
        if ctx.costs_e is not None and ctx.needs_input_grad[1]:
            grad_edge = (ctx.edges_of(v) - ctx.edges_of(v_target)).to(v.dtype) * scale
        return grad_unary, grad_edge, None, None, None, None, None, None


def imle_hamming_matching(unary: Tensor, edge_aff: Tensor | None, noise_unary: Tensor, noise_edge: Tensor | None,
                          lam: float, solve: Solver, edges_of: Callable[[Tensor], Tensor] | None = None,
                          solve_target: Solver | None = None):
    """(per-instance Hamming loss (B,), matching ṽ (B, N, N)); gradients reach unary and edge_aff.

    `solve_target` solves the backward (λ-shifted) problem; default `solve`. With λ large that problem
    is dominated by its unary term, so a cheaper solver is enough there."""
    return MatchingHammingIMLE.apply(unary, edge_aff, noise_unary, noise_edge, lam, solve, edges_of,
                                     solve_target or solve)
