"""Batched second-order graph matching (quadratic assignment) for LVM-Med.

Problem (maximisation, LVM-Med Eq. 4 with the sign flipped)::

    max_{v in permutation matrices}  sum_ia c^v_ia v_ia + sum_{(i,j) in E_s, (a,b) in E_t} c^e_{(i,j),(a,b)} v_ia v_jb

Chosen solver (benchmarks/README.md): multi-start robust tabu search over 2-swaps (Taillard 1991),
batched over instances and restarts in torch; one start is the first-order (LAP) solution. Only that LAP
leaves the device (scipy ``linear_sum_assignment`` on CPU, ~10 us per 16x16 instance plus one
device->host copy); the search itself is pure torch and runs wherever the inputs live.

Conventions
- ``unary``: [B, N, N]; ``edge_affinity``: [B, Es, Et]; ``edges_s``: [B, Es, 2]; ``edges_t``: [B, Et, 2]
  (long, node indices in [0, N)). All instances of a batch share N, Es and Et (with kNN k=5 on 16 nodes
  every node has exactly 5 out-edges, so Es = Et = 80). Pad ragged edge lists with a duplicate edge and a
  zero affinity if ever needed. Directed edges. Self-loops are allowed: in ``solve_qap`` an edge pair with
  exactly one self-loop is never paid by a permutation (ignored), a pair of two self-loops acts as a unary term.
- The dense affinity matrix (``affinity_matrix``) uses row-major vectorisation ``x[i*N + a] = v[i, a]``;
  ``layout="pygm"`` gives pygmtools' column-major one (``x[a*N + i] = v[i, a]``).
- Everything is computed under ``torch.no_grad()``; the IMLE estimator wraps these functions.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = [
    "affinity_matrix", "edge_indicator", "identity_is_optimal", "qap_objective", "solve_lap", "solve_qap",
    "hungarian", "local_search_2swap", "tabu_search",
]


def edge_indicator(v: Tensor, edges_s: Tensor, edges_t: Tensor) -> Tensor:
    """[B, Es, Et] with entry v[i, a] * v[j, b] for source edge (i, j) and target edge (a, b)."""
    bi = torch.arange(v.shape[0], device=v.device)[:, None, None]
    v_ia = v[bi, edges_s[:, :, None, 0], edges_t[:, None, :, 0]]
    v_jb = v[bi, edges_s[:, :, None, 1], edges_t[:, None, :, 1]]
    return v_ia * v_jb


def qap_objective(v: Tensor, unary: Tensor, edge_affinity: Tensor, edges_s: Tensor, edges_t: Tensor) -> Tensor:
    """[B] objective sum(unary * v) + sum(edge_affinity * edge_indicator(v)); v may be fractional."""
    v = v.to(unary.dtype)
    return (unary * v).sum((1, 2)) + (edge_affinity * edge_indicator(v, edges_s, edges_t)).sum((1, 2))


@torch.no_grad()
def identity_is_optimal(unary: Tensor, edge_affinity: Tensor | None, edges_s: Tensor | None,
                        edges_t: Tensor | None) -> Tensor:
    """[B] bool: True where the identity is provably the only maximiser (a sufficient test, no solve).

    A permutation v that moves the node set S changes the unary term by sum_{i in S} (u[i, v(i)] - u[i, i])
    <= sum_{i in S} d_i, d_i = max_{a != i} u[i, a] - u[i, i]. Only source edges r = (i, j) touching S can pay
    differently; r pays the target edges equal to (v(i), v(j)), at most m * max(0, max_t c^e[r, t]) with m
    the largest multiplicity of a target edge, against p_r = what the identity pays on r. So the edge term
    gains at most sum_{i in S} D_i, D_i = sum over source edges r touching i of (m max(0, max_t c^e[r, t]) - p_r).
    If d_i + D_i < 0 for every i, every v != I scores below I.
    """
    u = unary.double()
    B, N, _ = u.shape
    off = u.masked_fill(torch.eye(N, dtype=torch.bool, device=u.device), -float("inf"))
    bound = off.amax(-1) - u.diagonal(dim1=1, dim2=2)  # d_i, [B, N]
    if edge_affinity is not None:
        ce = edge_affinity.double()
        eye = torch.eye(N, dtype=ce.dtype, device=ce.device).expand(B, N, N)
        paid = (ce * edge_indicator(eye, edges_s, edges_t)).sum(-1)  # p_r, [B, Es]
        keys = edges_t[..., 0] * N + edges_t[..., 1]
        mult = (keys[:, :, None] == keys[:, None, :]).sum(-1).amax(-1)  # m, [B]
        slack = mult[:, None] * ce.amax(-1).clamp_min(0) - paid  # >= 0 per source edge
        touch = torch.zeros(B, N, dtype=ce.dtype, device=ce.device)
        touch.scatter_add_(1, edges_s[..., 0], slack).scatter_add_(1, edges_s[..., 1], slack)
        bound = bound + touch
    return (bound < 0).all(-1)


def affinity_matrix(unary: Tensor, edge_affinity: Tensor, edges_s: Tensor, edges_t: Tensor,
                    layout: str = "row") -> Tensor:
    """Dense Lawler-QAP matrix K [B, N*N, N*N] with x^T K x == qap_objective for x = vec(v), v 0/1.

    K[(i,a), (j,b)] = c^e[(i,j), (a,b)] (summed over duplicates), diagonal K[(i,a), (i,a)] += c^v[i, a].
    ``layout="row"``: index (i,a) -> i*N + a.  ``layout="pygm"``: (i,a) -> a*N + i (pygmtools' convention).
    K is not symmetric; solvers that need symmetry use (K + K^T) / 2, which has the same quadratic form.
    """
    B, N, _ = unary.shape
    nn_ = N * N
    if layout == "row":
        idx = lambda i, a: i * N + a  # noqa: E731
    elif layout == "pygm":
        idx = lambda i, a: a * N + i  # noqa: E731
    else:
        raise ValueError(f"unknown layout {layout!r}")
    rows = idx(edges_s[:, :, None, 0], edges_t[:, None, :, 0])
    cols = idx(edges_s[:, :, None, 1], edges_t[:, None, :, 1])
    K = torch.zeros(B, nn_ * nn_, dtype=unary.dtype, device=unary.device)
    K.scatter_add_(1, (rows * nn_ + cols).reshape(B, -1), edge_affinity.to(unary.dtype).reshape(B, -1))
    K = K.view(B, nn_, nn_)
    diag = unary if layout == "row" else unary.transpose(1, 2)
    K.diagonal(dim1=1, dim2=2).add_(diag.reshape(B, nn_))
    return K


def hungarian(scores: Tensor) -> Tensor:
    """Per-instance maximising LAP of scores [B, N, N] -> column index per row, LongTensor [B, N] (same device).

    Runs scipy on CPU: costs one device->host copy on CUDA.
    """
    s = scores.detach().to("cpu", torch.float64).numpy()
    out = np.empty(s.shape[:2], dtype=np.int64)
    for b in range(s.shape[0]):
        out[b] = linear_sum_assignment(s[b], maximize=True)[1]
    return torch.from_numpy(out).to(scores.device)


def _perm_to_mat(perm: Tensor, dtype: torch.dtype) -> Tensor:
    N = perm.shape[-1]
    return torch.nn.functional.one_hot(perm, N).to(dtype)


@torch.no_grad()
def solve_lap(unary: Tensor) -> Tensor:
    """First-order ablation: argmax_v sum(unary * v) over permutations, [B, N, N] 0/1 (scipy, exact)."""
    return _perm_to_mat(hungarian(unary), unary.dtype)


def _quad(x: Tensor, Ks: Tensor) -> Tensor:
    """x [B, R, n2], Ks [B, n2, n2] -> x^T Ks x per start, [B, R]."""
    return (torch.bmm(x, Ks) * x).sum(-1)


@torch.no_grad()
def local_search_2swap(Ks: Tensor, perm: Tensor, max_iters: int = 100) -> tuple[Tensor, Tensor]:
    """Best-improvement 2-swap local search on x^T Ks x (Ks symmetric [B, N*N, N*N], row-major).

    perm [B, R, N] (perm[..., i] = a), R starts per instance. Each step applies, per start, the swap of the
    targets of two source nodes with the largest gain; stops when no start improves. Returns
    (perm [B, R, N], objective [B, R]).
    """
    B, R, N = perm.shape
    dev = perm.device
    iu = torch.triu_indices(N, N, 1, device=dev)  # [2, P] node pairs i < j
    P = iu.shape[1]
    ii, jj = iu[0].expand(B, R, P), iu[1].expand(B, R, P)
    sign = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=Ks.dtype, device=dev)
    bidx = torch.arange(B, device=dev)[:, None, None, None, None]
    for _ in range(max_iters):
        x = _perm_to_mat(perm, Ks.dtype).view(B, R, N * N)
        g2 = 2.0 * torch.bmm(x, Ks)  # gradient of x^T Ks x
        pi, pj = perm.gather(2, ii), perm.gather(2, jj)
        pos = torch.stack([ii * N + pj, jj * N + pi, ii * N + pi, jj * N + pj], -1)  # [B, R, P, 4]
        lin = (g2.gather(2, pos.view(B, R, -1)).view_as(pos) * sign).sum(-1)
        sub = Ks[bidx, pos[..., :, None], pos[..., None, :]]  # [B, R, P, 4, 4]
        delta = lin + torch.einsum("p,brkpq,q->brk", sign, sub, sign)
        best_delta, best_k = delta.max(-1)
        improve = best_delta > 1e-9 * (1.0 + (x * g2).sum(-1).abs())
        if not bool(improve.any()):
            break
        bi, bj = iu[0][best_k], iu[1][best_k]  # [B, R]
        vi, vj = perm.gather(2, bi[..., None]), perm.gather(2, bj[..., None])
        new = perm.scatter(2, bi[..., None], vj).scatter(2, bj[..., None], vi)
        perm = torch.where(improve[..., None], new, perm)
    x = _perm_to_mat(perm, Ks.dtype).view(B, R, N * N)
    return perm, _quad(x, Ks)


def _swap_moves(flat: Tensor, kd: Tensor, g2: Tensor, perm: Tensor, iN: Tensor, jN: Tensor, ii: Tensor, jj: Tensor):
    """Gain of every 2-swap of perm [B, R, N] (swap the targets of source nodes ii[k] < jj[k]).

    flat: the symmetric K [B, n2, n2] viewed as [B, R, n2*n2] (expanded), with no entries inside a row block
    (i,.),(i,.) or a column block (.,a),(.,a) off the diagonal (``_solver_matrix`` guarantees it); kd its
    diagonal [B, R, n2]; g2 = 2 K x [B, R, n2]; iN, jN = ii * N, jj * N. Returns (gain [B, R, P],
    positions [B, R, P, 4]: entries set to 1 (first two) and to 0 (last two) by each swap).
    """
    n2 = g2.shape[-1]
    pi, pj = perm.gather(2, ii), perm.gather(2, jj)
    p1, p2, p3, p4 = iN + pj, jN + pi, iN + pi, jN + pj
    hp, hm = g2 + kd, g2 - kd
    gain = (hp.gather(2, p1) + hp.gather(2, p2) - hm.gather(2, p3) - hm.gather(2, p4)
            + 2.0 * (flat.gather(2, p1 * n2 + p2) + flat.gather(2, p3 * n2 + p4)))
    return gain, torch.stack([p1, p2, p3, p4], -1)


def _solver_matrix(unary: Tensor, edge_affinity: Tensor, edges_s: Tensor, edges_t: Tensor, dtype) -> Tensor:
    """Symmetric row-major K for the search. Edge pairs with exactly one self-loop can never be paid by a
    permutation and are dropped; pairs of two self-loops land on the diagonal (v_ia * v_ia = v_ia)."""
    loop_s = edges_s[..., 0] == edges_s[..., 1]
    loop_t = edges_t[..., 0] == edges_t[..., 1]
    payable = loop_s[:, :, None] == loop_t[:, None, :]
    ce = torch.where(payable, edge_affinity.to(dtype), torch.zeros((), dtype=dtype, device=unary.device))
    K = affinity_matrix(unary.to(dtype), ce, edges_s, edges_t)
    return 0.5 * (K + K.transpose(1, 2))


@torch.no_grad()
def tabu_search(Ks: Tensor, perm: Tensor, iters: int = 100, seed: int = 0,
                tenure: tuple[float, float] = (0.9, 1.1)) -> tuple[Tensor, Tensor]:
    """Batched robust tabu search (Taillard 1991) over 2-swaps, maximising x^T Ks x.

    Ks [B, n2, n2] symmetric (row-major), perm [B, R, N]: R independent searches per instance. Each step
    takes the best non-tabu swap (improving or not); a swap is tabu if it puts both nodes back on targets
    they left less than ``tenure`` * N steps ago (random per step), unless it beats the best found.
    Pure torch (any device). Returns the best permutation seen per search [B, R, N] and its objective [B, R].
    """
    B, R, N = perm.shape
    n2, dev = N * N, perm.device
    iu = torch.triu_indices(N, N, 1, device=dev)
    ii, jj = iu[0].expand(B, R, -1), iu[1].expand(B, R, -1)
    iN, jN = ii * N, jj * N
    kd = Ks.diagonal(dim1=1, dim2=2)[:, None].expand(B, R, n2)
    flat = Ks.reshape(B, 1, n2 * n2).expand(B, R, n2 * n2)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = max(1, int(tenure[0] * N)), max(2, int(tenure[1] * N) + 1)
    tenures = torch.randint(lo, hi, (iters, B, R), generator=gen).to(dev)
    x = _perm_to_mat(perm, Ks.dtype).view(B, R, n2)
    g2 = 2.0 * torch.bmm(x, Ks)
    cur = 0.5 * (g2 * x).sum(-1)
    best, best_perm = cur.clone(), perm.clone()
    tabu_until = torch.zeros(B, R, n2, dtype=torch.long, device=dev)
    bidx = torch.arange(B, device=dev)[:, None, None]
    for it in range(1, iters + 1):
        gain, pos = _swap_moves(flat, kd, g2, perm, iN, jN, ii, jj)
        tabu = (tabu_until.gather(2, pos[..., 0]) > it) & (tabu_until.gather(2, pos[..., 1]) > it)
        aspire = cur[..., None] + gain > best[..., None] + 1e-9 * (1.0 + best[..., None].abs())
        gain_ok = torch.where(tabu & ~aspire, torch.full_like(gain, -1e30), gain)
        step, k = gain_ok.max(-1)
        step = gain.gather(2, k[..., None]).squeeze(-1)
        mv = pos.gather(2, k[..., None, None].expand(B, R, 1, 4)).squeeze(2)  # [B, R, 4]
        tabu_until.scatter_(2, mv[..., 2:], (it + tenures[it - 1])[..., None].expand(B, R, 2))
        rows = Ks[bidx, mv]  # [B, R, 4, n2]
        g2 = g2 + 2.0 * (rows[:, :, 0] + rows[:, :, 1] - rows[:, :, 2] - rows[:, :, 3])
        a, b = iu[0][k], iu[1][k]
        pa, pb = perm.gather(2, a[..., None]), perm.gather(2, b[..., None])
        perm = perm.scatter(2, a[..., None], pb).scatter(2, b[..., None], pa)
        cur = cur + step
        better = cur > best
        best = torch.where(better, cur, best)
        best_perm = torch.where(better[..., None], perm, best_perm)
    return best_perm, best


@torch.no_grad()
def solve_qap(unary: Tensor, edge_affinity: Tensor, edges_s: Tensor, edges_t: Tensor, *,
              restarts: int = 16, iters: int = 100, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """Approximate maximiser of the QAP; returns 0/1 permutation matrices [B, N, N] (dtype of ``unary``).

    ``restarts`` tabu searches of ``iters`` steps per instance, batched: the first starts from the LAP
    solution of ``unary`` (one scipy call per instance, on CPU), the others from random permutations
    (seeded by ``seed``, reproducible); the best permutation found wins. It is a 2-swap local optimum.
    Runs in ``dtype`` (float64 by default: near-ties matter, and the gradient is updated incrementally).
    """
    B, N, _ = unary.shape
    dev = unary.device
    if N < 2:
        return solve_lap(unary)
    Ks = _solver_matrix(unary, edge_affinity, edges_s, edges_t, dtype)
    starts = hungarian(unary)[:, None]
    if restarts > 1:
        gen = torch.Generator().manual_seed(seed)
        rnd = torch.argsort(torch.rand(B, restarts - 1, N, generator=gen), -1).to(dev)
        starts = torch.cat([starts, rnd], 1)
    perm, obj = tabu_search(Ks, starts, iters, seed)
    perm, obj = local_search_2swap(Ks, perm)
    perm = perm[torch.arange(B, device=dev), obj.argmax(1)]
    return _perm_to_mat(perm, unary.dtype)
