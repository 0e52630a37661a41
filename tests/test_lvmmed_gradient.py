"""LVM-Med's IMLE gradient: the two λ conventions on a hand-computed instance, the bound that skips the λ-shifted
solve (sound against brute force, and gradients identical to solving), and the seeded solver restarts."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from medssl_bench.methods.blocks import graph_matching
from medssl_bench.methods.blocks.graph_matching import edge_indicator, identity_is_optimal, solve_qap
from medssl_bench.methods.blocks.imle import imle_hamming_matching
from medssl_bench.methods.blocks.lvmmed_graph import edge_affinity, knn_edges


def brute(unary, edge, edges_s, edges_t):
    """Exact QAP by enumeration, batched (small N only)."""
    n = unary.shape[-1]
    perms = torch.tensor(list(itertools.permutations(range(n))))
    mats = F.one_hot(perms, n).to(unary.dtype)  # (n!, n, n)
    out = []
    for b in range(unary.shape[0]):
        score = (mats * unary[b]).sum((1, 2))
        if edge is not None:
            pay = edge_indicator(mats, edges_s[b].expand(len(mats), -1, -1), edges_t[b].expand(len(mats), -1, -1))
            score = score + (pay * edge[b]).sum((1, 2))
        out.append(mats[score.argmax()])
    return torch.stack(out)


# ---------------------------------------------------------------- the two conventions, by hand
# Two 3-node instances, noise 0, edges (0,1), (1,2) in both graphs with zero edge costs.
# A: θ = [[0,1,0],[1,0,0],[0,0,1]]; the identity I scores 1, the swap of nodes 0 and 1 scores 3: ṽ = swap01.
# B: θ = [[0,0,1],[0,1,0],[1,0,0]]; I scores 1, swap02 scores 3: ṽ = swap02.
# A shift s adds s (2·#fixed points - 3): I +3s, a swap (1 fixed point) -s, a 3-cycle (none) -3s. So I beats
# the swap iff 1 + 3s > 3 - s, i.e. s > 0.5 (the other swap scores 0 - s and the 3-cycles 1 - 3s: never best).
# Paid edges: ṽ = swap01 sends (0,1) -> (1,0) and (1,2) -> (0,2), neither a target edge; swap02 sends them to
# (2,1), (1,0): none either. So edges(ṽ) = 0 and edges(I) = the 2x2 identity.
# The loss is the mean over the 2 instances, so the incoming gradient per instance is g = 1/2.
THETA = torch.tensor([[[0.0, 1, 0], [1, 0, 0], [0, 0, 1]], [[0.0, 0, 1], [0, 1, 0], [1, 0, 0]]])
V_TILDE = torch.tensor([[[0.0, 1, 0], [1, 0, 0], [0, 0, 1]], [[0.0, 0, 1], [0, 1, 0], [1, 0, 0]]])
EDGES = torch.tensor([[[0, 1], [1, 2]]] * 2)


def gradients(lam, convention, skip_proven=True, reduce="mean"):
    unary = THETA.clone().requires_grad_(True)
    edge = torch.zeros(2, 2, 2, requires_grad=True)
    loss, v = imle_hamming_matching(unary, edge, torch.zeros(2, 3, 3), torch.zeros(2, 2, 2), lam, brute, EDGES, EDGES,
                                    convention=convention, skip_proven=skip_proven)
    torch.testing.assert_close(v, V_TILDE)
    (loss.mean() if reduce == "mean" else loss.sum()).backward()
    return unary.grad, edge.grad


@pytest.mark.parametrize("skip_proven", [True, False])
def test_the_two_lambda_conventions_on_a_hand_computed_instance(skip_proven):
    diff = V_TILDE - torch.eye(3)  # ṽ - I: -1 on the moved diagonal entries, +1 on the swapped pair
    minus_i2 = -torch.eye(2).expand(2, 2, 2)  # edges(ṽ) - edges(I)
    # per_instance, λ 0.8: shift 0.8 > 0.5, so v_λ = I; gradient g (ṽ - I)/λ = 0.5/0.8 = 0.625 per entry.
    grad_u, grad_e = gradients(0.8, "per_instance", skip_proven)
    torch.testing.assert_close(grad_u, 0.625 * diff)
    torch.testing.assert_close(grad_e, 0.625 * minus_i2)
    # batch_mean, λ 0.8: shift λ g = 0.4 < 0.5, so v_λ = ṽ and the gradient is 0.
    grad_u, grad_e = gradients(0.8, "batch_mean", skip_proven)
    torch.testing.assert_close(grad_u, torch.zeros(2, 3, 3))
    torch.testing.assert_close(grad_e, torch.zeros(2, 2, 2))
    # batch_mean, λ 1.6: shift 0.8, v_λ = I; gradient (ṽ - I)/λ = 1/1.6 = 0.625, not multiplied by g = 1/2 again
    # (the per-instance convention at λ equals batch_mean at λ·G).
    grad_u, grad_e = gradients(1.6, "batch_mean", skip_proven)
    torch.testing.assert_close(grad_u, 0.625 * diff)
    torch.testing.assert_close(grad_e, 0.625 * minus_i2)
    # batch_mean on a summed loss (g = 1), λ 0.8: shift 0.8, v_λ = I, gradient 1/0.8 = 1.25 per entry.
    grad_u, _ = gradients(0.8, "batch_mean", skip_proven, reduce="sum")
    torch.testing.assert_close(grad_u, 1.25 * diff)


def test_an_unknown_convention_is_refused():
    with pytest.raises(ValueError, match="batch_mean, per_instance"):
        imle_hamming_matching(THETA, None, torch.zeros(2, 3, 3), None, 1.0, brute, convention="per_batch")


# ---------------------------------------------------------------- the bound that skips the λ-shifted solve
def test_the_bound_on_hand_instances():
    # A shifted by s = 0.8: rows [0.8, 0.2, -0.8], [0.2, 0.8, -0.8], [-0.8, -0.8, 1.8]; best off-diagonal minus
    # diagonal: -0.6, -0.6, -2.6, all < 0, and zero edge costs add nothing: proven.
    shifted = THETA[:1] + 0.8 * (2 * torch.eye(3) - 1)
    assert identity_is_optimal(shifted, torch.zeros(1, 2, 2), EDGES[:1], EDGES[:1]).tolist() == [True]
    # s = 0.4 (the swap still wins): row 0 is [0.4, 0.6, -0.4], 0.6 - 0.4 > 0: not proven.
    shifted = THETA[:1] + 0.4 * (2 * torch.eye(3) - 1)
    assert identity_is_optimal(shifted, torch.zeros(1, 2, 2), EDGES[:1], EDGES[:1]).tolist() == [False]
    # Unary 2·I (every d_i = -2) and edge costs [[0, 0], [0, 3]]: the identity pays c^e[(1,2),(1,2)] = 0 on
    # source edge (0,1) and 3 on (1,2); each row's best is 0 and 3, so both slacks are 0: proven. With
    # c^e[(0,1),(1,2)] = 5 instead, source edge (0,1) could gain 5 - 0 = 5 > 2 for nodes 0 and 1: not proven.
    unary = 2 * torch.eye(3)[None]
    assert identity_is_optimal(unary, torch.tensor([[[0.0, 0], [0, 3]]]), EDGES[:1], EDGES[:1]).tolist() == [True]
    assert identity_is_optimal(unary, torch.tensor([[[0.0, 5], [0, 0]]]), EDGES[:1], EDGES[:1]).tolist() == [False]


def test_the_bound_never_certifies_a_wrong_identity():
    gen = torch.Generator().manual_seed(0)
    n, b = 5, 300
    edges = torch.stack([knn_edges(torch.randn(1, n, 4, generator=gen), 2)[0] for _ in range(2 * b)]).view(2, b, -1, 2)
    for shift in (0.5, 2.0, 4.0, 8.0):
        unary = torch.randn(b, n, n, generator=gen) + shift * (2 * torch.eye(n) - 1)
        edge = torch.randn(b, edges.shape[2], edges.shape[2], generator=gen)
        proven = identity_is_optimal(unary, edge, edges[0], edges[1])
        exact_is_identity = (brute(unary, edge, edges[0], edges[1]) == torch.eye(n)).all(-1).all(-1)
        assert not (proven & ~exact_is_identity).any()
        if shift == 8.0:
            assert proven.float().mean() > 0.5  # and it is not vacuous


def noisy_instances(groups=6, n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    signal = torch.randn(groups, n, 32, generator=gen)
    z_s = signal + 0.5 * torch.randn(groups, n, 32, generator=gen)
    z_t = signal + 0.5 * torch.randn(groups, n, 32, generator=gen)
    e_s, e_t = knn_edges(z_s, 5), knn_edges(z_t, 5)
    gumbel = lambda shape: -torch.log(-torch.log(torch.rand(shape, generator=gen).clamp(1e-10, 1 - 1e-10)))  # noqa: E731
    unary = F.normalize(z_s, dim=-1) @ F.normalize(z_t, dim=-1).transpose(1, 2)
    return unary, edge_affinity(z_s, z_t, e_s, e_t), gumbel(unary.shape), gumbel((groups, 80, 80)), e_s, e_t


def test_skipping_proven_targets_gives_the_solvers_gradients_and_solves_the_rest():
    unary, edge, noise_u, noise_e, e_s, e_t = noisy_instances()
    # batch_mean with loss weights: instances 0-2 get shift 80 (proven at any realistic noise: see
    # benchmarks/lvmmed_options.py), instances 3-5 shift 0.8 (never proven there)
    weights = torch.tensor([1.0, 1, 1, 0.01, 0.01, 0.01])
    solved_rows = []

    def target(u, e, es, et):
        solved_rows.append(len(u))
        return solve_qap(u, e, es, et, restarts=1, iters=10)

    grads = {}
    for skip in (True, False):
        u, e = unary.clone().requires_grad_(True), edge.clone().requires_grad_(True)
        loss, _ = imle_hamming_matching(u, e, noise_u, noise_e, 80.0,
                                        lambda *a: solve_qap(*a, restarts=2, iters=20), e_s, e_t, target,
                                        convention="batch_mean", skip_proven=skip)
        (weights * loss).sum().backward()
        grads[skip] = (u.grad, e.grad)
    assert solved_rows == [3, 6]  # with the bound: only the three unproven instances reach the solver
    assert torch.equal(grads[True][0], grads[False][0]) and torch.equal(grads[True][1], grads[False][1])
    assert grads[True][0][3:].abs().sum() > 0  # the solved ones still carry a gradient


# ---------------------------------------------------------------- solver restarts, seeded
def test_solver_restarts_follow_the_seed(monkeypatch):
    unary, edge, noise_u, noise_e, e_s, e_t = noisy_instances(groups=2)
    starts = []
    real = graph_matching.tabu_search
    monkeypatch.setattr(graph_matching, "tabu_search", lambda Ks, perm, *a: starts.append(perm) or real(Ks, perm, *a))
    u, e = unary + noise_u, edge + noise_e
    first = solve_qap(u, e, e_s, e_t, restarts=4, iters=5, seed=11)
    again = solve_qap(u, e, e_s, e_t, restarts=4, iters=5, seed=11)
    solve_qap(u, e, e_s, e_t, restarts=4, iters=5, seed=12)
    assert torch.equal(first, again) and torch.equal(starts[0], starts[1])
    assert torch.equal(starts[0][:, 0], starts[2][:, 0])  # the LAP start does not depend on the seed
    assert not torch.equal(starts[0][:, 1:], starts[2][:, 1:])  # the random restarts do
