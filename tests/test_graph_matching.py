"""methods/blocks/graph_matching.py: the batched QAP solver used by LVM-Med's perturb-and-MAP matching."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from medssl_bench.methods.blocks import graph_matching as gm


def _knn_edges(z: np.ndarray, k: int) -> np.ndarray:
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    nbr = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.stack([np.repeat(np.arange(len(z)), k), nbr.reshape(-1)], 1)


def _instances(B: int, N: int, k: int, seed: int, sigma: float = 0.5, gumbel: bool = True):
    """Two noisy views of N clustered points, kNN graphs, cosine affinities (+ Gumbel noise)."""
    rng = np.random.default_rng(seed)
    U, C, ES, ET = [], [], [], []
    for _ in range(B):
        x = rng.standard_normal((4, 32))[rng.integers(0, 4, N)] + 0.8 * rng.standard_normal((N, 32))
        zs, zt = (x + sigma * rng.standard_normal((N, 32)) / np.sqrt(32) for _ in range(2))
        zs, zt = zs / np.linalg.norm(zs, axis=1, keepdims=True), zt / np.linalg.norm(zt, axis=1, keepdims=True)
        es, et = _knn_edges(zs, k), _knn_edges(zt, k)
        ds, dt = zs[es[:, 0]] - zs[es[:, 1]], zt[et[:, 0]] - zt[et[:, 1]]
        ds /= np.linalg.norm(ds, axis=1, keepdims=True)
        dt /= np.linalg.norm(dt, axis=1, keepdims=True)
        cv, ce = zs @ zt.T, ds @ dt.T
        if gumbel:
            cv, ce = cv + rng.gumbel(size=cv.shape), ce + rng.gumbel(size=ce.shape)
        U.append(cv), C.append(ce), ES.append(es), ET.append(et)
    f = lambda a: torch.from_numpy(np.stack(a)).double()  # noqa: E731
    return f(U), f(C), torch.from_numpy(np.stack(ES)), torch.from_numpy(np.stack(ET))


def _brute_force(unary, edge_aff, edges_s, edges_t):
    """Exact optimum over all N! permutations; objective [B] (numpy)."""
    U, C, ES, ET = (t.numpy() for t in (unary, edge_aff, edges_s, edges_t))
    B, N, _ = U.shape
    P = np.array(list(itertools.permutations(range(N))))
    best = np.empty(B)
    for b in range(B):
        lookup = np.full((N, N), ET.shape[1])
        lookup[ET[b, :, 0], ET[b, :, 1]] = np.arange(ET.shape[1])
        cpad = np.concatenate([C[b], np.zeros((C.shape[1], 1))], 1)
        tgt = lookup[P[:, ES[b, :, 0]], P[:, ES[b, :, 1]]]
        obj = U[b][np.arange(N), P].sum(1) + cpad[np.arange(C.shape[1]), tgt].sum(1)
        best[b] = obj.max()
    return best


def _is_perm(v: torch.Tensor) -> bool:
    return bool(((v == 0) | (v == 1)).all() and (v.sum(1) == 1).all() and (v.sum(2) == 1).all())


def test_solve_qap_returns_permutation_matrices():
    u, c, es, et = _instances(5, 16, 5, seed=0)
    v = gm.solve_qap(u.float(), c.float(), es, et, restarts=4, iters=20)
    assert v.shape == (5, 16, 16) and v.dtype == torch.float32 and _is_perm(v)
    # deterministic for a fixed seed
    assert torch.equal(v, gm.solve_qap(u.float(), c.float(), es, et, restarts=4, iters=20))


def test_solve_qap_within_1pct_of_brute_force_on_8_nodes():
    u, c, es, et = _instances(24, 8, 3, seed=1)
    opt = _brute_force(u, c, es, et)
    v = gm.solve_qap(u, c, es, et)
    assert _is_perm(v)
    got = gm.qap_objective(v, u, c, es, et).numpy()
    gap = (opt - got) / np.abs(opt)
    assert gap.max() <= 0.01, gap
    assert (gap <= 1e-9).mean() >= 0.9  # with the defaults all 200 benchmark instances were exact
    assert (got <= opt + 1e-9).all()


def test_qap_objective_and_edge_indicator_hand_computed():
    unary = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])[None]
    edges_s = torch.tensor([[0, 1], [1, 2]])[None]          # e0 = (0,1), e1 = (1,2)
    edges_t = torch.tensor([[1, 2], [0, 1], [2, 0]])[None]  # f0 = (1,2), f1 = (0,1), f2 = (2,0)
    ce = torch.tensor([[0.5, -1.0, 2.0], [3.0, 4.0, -0.25]])[None]
    v = torch.zeros(1, 3, 3)
    v[0, 0, 1] = v[0, 1, 2] = v[0, 2, 0] = 1  # pi = (0->1, 1->2, 2->0)
    # unary 2 + 6 + 7; e0 -> (pi0, pi1) = (1,2) = f0: +0.5; e1 -> (pi1, pi2) = (2,0) = f2: -0.25
    assert gm.qap_objective(v, unary, ce, edges_s, edges_t).item() == pytest.approx(15.25)
    assert torch.equal(gm.edge_indicator(v, edges_s, edges_t), torch.tensor([[[1.0, 0, 0], [0, 0, 1]]]))


def test_edge_indicator_fractional_matches_loops():
    g = torch.Generator().manual_seed(0)
    v = torch.rand(2, 4, 4, generator=g)
    es = torch.tensor([[[0, 1], [2, 3], [3, 0]], [[1, 1], [0, 2], [2, 1]]])
    et = torch.tensor([[[1, 0], [3, 2]], [[2, 3], [0, 0]]])
    got = gm.edge_indicator(v, es, et)
    for b in range(2):
        for e, (i, j) in enumerate(es[b].tolist()):
            for f, (a, bb) in enumerate(et[b].tolist()):
                assert got[b, e, f].item() == pytest.approx((v[b, i, a] * v[b, j, bb]).item())


def test_lap_is_exact_for_zero_edge_term():
    u, c, es, et = _instances(10, 8, 3, seed=2)
    c = torch.zeros_like(c)
    opt = _brute_force(u, c, es, et)
    v_lap = gm.solve_lap(u)
    assert _is_perm(v_lap)
    np.testing.assert_allclose(gm.qap_objective(v_lap, u, c, es, et).numpy(), opt, rtol=0, atol=1e-9)
    v = gm.solve_qap(u, c, es, et, restarts=2, iters=10)
    np.testing.assert_allclose(gm.qap_objective(v, u, c, es, et).numpy(), opt, rtol=0, atol=1e-9)


@pytest.mark.parametrize("layout", ["row", "pygm"])
def test_affinity_matrix_quadratic_form_equals_objective(layout):
    u, c, es, et = _instances(3, 5, 2, seed=3)
    K = gm.affinity_matrix(u, c, es, et, layout=layout)
    perms = torch.tensor(list(itertools.permutations(range(5))))
    V = torch.nn.functional.one_hot(perms, 5).double()  # [120, 5, 5]
    for b in range(3):
        x = V.reshape(120, -1) if layout == "row" else V.transpose(1, 2).reshape(120, -1)
        quad = torch.einsum("pi,ij,pj->p", x, K[b], x)
        n = len(perms)
        obj = gm.qap_objective(V, u[b].expand(n, 5, 5), c[b].expand(n, -1, -1),
                               es[b].expand(n, -1, -1), et[b].expand(n, -1, -1))
        torch.testing.assert_close(quad, obj)


def test_pygmtools_conversion_agrees_with_its_builder_and_brute_force():
    pygm = pytest.importorskip("pygmtools")
    pygm.set_backend("pytorch")
    from pygmtools.utils import _aff_mat_from_node_edge_aff

    u, c, es, et = _instances(4, 7, 3, seed=4)
    K = gm.affinity_matrix(u, c, es, et, layout="pygm")
    torch.testing.assert_close(K, _aff_mat_from_node_edge_aff(u, c, es, et, None, None, None, None))
    v = gm.solve_qap(u, c, es, et)
    np.testing.assert_allclose(pygm.utils.compute_affinity_score(v, K).numpy(), _brute_force(u, c, es, et),
                               rtol=1e-9)


def test_swap_gains_equal_objective_differences():
    u, c, es, et = _instances(2, 7, 3, seed=5)
    N = 7
    Ks = gm._solver_matrix(u, c, es, et, torch.float64)
    perm = torch.argsort(torch.rand(2, 3, N, generator=torch.Generator().manual_seed(0)), -1)
    x = torch.nn.functional.one_hot(perm, N).double().view(2, 3, N * N)
    iu = torch.triu_indices(N, N, 1)
    ii, jj = iu[0].expand(2, 3, -1), iu[1].expand(2, 3, -1)
    flat = Ks.reshape(2, 1, -1).expand(2, 3, -1)
    kd = Ks.diagonal(dim1=1, dim2=2)[:, None].expand(2, 3, -1)
    gain, _ = gm._swap_moves(flat, kd, 2 * torch.bmm(x, Ks), perm, ii * N, jj * N, ii, jj)

    def obj(p):
        return gm.qap_objective(torch.nn.functional.one_hot(p, N).double(), u, c, es, et)

    for r in range(3):
        for k in range(iu.shape[1]):
            p = perm[:, r].clone()
            a, b = iu[0, k], iu[1, k]
            p[:, [a, b]] = p[:, [b, a]]
            torch.testing.assert_close(obj(p) - obj(perm[:, r]), gain[:, r, k])


def test_self_loops_are_handled():
    u, c, es, et = _instances(6, 6, 2, seed=6)
    es, et = es.clone(), et.clone()
    es[:, 0] = torch.tensor([2, 2])   # a self-loop in the source graph
    et[:, 1] = torch.tensor([4, 4])   # and one in the target graph
    opt = _brute_force(u, c, es, et)
    v = gm.solve_qap(u, c, es, et)
    np.testing.assert_allclose(gm.qap_objective(v, u, c, es, et).numpy(), opt, rtol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_solve_qap_on_cuda_matches_cpu_objective():
    u, c, es, et = _instances(8, 8, 3, seed=7)
    v = gm.solve_qap(u.cuda(), c.cuda(), es.cuda(), et.cuda())
    assert v.is_cuda and _is_perm(v)
    np.testing.assert_allclose(gm.qap_objective(v.cpu(), u, c, es, et).numpy(), _brute_force(u, c, es, et),
                               rtol=1e-9)
