"""LVM-Med's graphs and affinities (docs/lvmmed.md; LVM-Med paper, Eqs. 1-4).

Shapes: G matching instances (groups) of N images; P feature-map cells per image; D channels;
F embedding width; E = N*k directed kNN edges per graph. All functions are pure and batched
over groups.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def knn_edges(z: torch.Tensor, k: int) -> torch.Tensor:
    """Directed kNN edges (i -> j for the k nearest j != i by cosine), (G, N*k, 2) node indices."""
    with torch.no_grad():
        zn = F.normalize(z, dim=-1)
        sim = zn @ zn.transpose(1, 2)
        sim.diagonal(dim1=1, dim2=2).fill_(-float("inf"))
        neighbours = sim.topk(k, dim=-1).indices  # (G, N, k)
    n = z.shape[1]
    sources = torch.arange(n, device=z.device).repeat_interleave(k).expand(z.shape[0], -1)
    return torch.stack([sources, neighbours.reshape(z.shape[0], -1)], dim=-1)


def gcn_adjacency(edges: torch.Tensor, n: int) -> torch.Tensor:
    """D^-1/2 (A + I) D^-1/2 with A the kNN graph made symmetric (GCN needs an undirected graph)."""
    g = edges.shape[0]
    adj = torch.zeros(g, n, n, device=edges.device)
    rows, cols = edges[..., 0], edges[..., 1]
    batch = torch.arange(g, device=edges.device)[:, None].expand_as(rows)
    adj[batch, rows, cols] = 1.0
    adj = torch.maximum(adj, adj.transpose(1, 2)) + torch.eye(n, device=edges.device)
    inv_sqrt = adj.sum(-1).rsqrt()
    return inv_sqrt[:, :, None] * adj * inv_sqrt[:, None, :]


class GCN(nn.Module):
    """Graph convolutions (Kipf & Welling), two layers of width 128 in LVM-Med: H' = Â H W.

    `residual=True` returns x + GCN(x) (ResGCN form). On a 16-node kNN graph (k=5) two plain
    layers reach almost every node, so each output is close to the group mean and nodes lose the
    identity that matching needs: on a controlled problem (tests/test_lvmmed.py) the plain form
    stays at chance accuracy while no-GCN and the residual form learn to ~0.8.

    `last_activation=True` puts σ (ReLU) on the output layer too, as Eq. 1 does for every layer.
    Off by default, the form the learning measurements used: ẑ is compared by cosine, and a ReLU output
    confines the plain form to the positive orthant; in the residual form it changed the cosine spread
    and the controlled problem's accuracy little (docs/lvmmed.md, "GCN").
    """

    def __init__(self, in_dim: int, width: int = 128, layers: int = 2, residual: bool = True,
                 last_activation: bool = False):
        super().__init__()
        if residual and width != in_dim:
            raise ValueError(f"a residual GCN needs width == input width, got {width} and {in_dim}")
        dims = [in_dim] + [width] * layers
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.residual, self.last_activation = residual, last_activation

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        h = x
        for index, linear in enumerate(self.linears):
            h = adjacency @ linear(h)
            if index < len(self.linears) - 1 or self.last_activation:
                h = F.relu(h)
        return x + h if self.residual else h


def local_affinity(maps_s: torch.Tensor, maps_t: torch.Tensor, grid_s: torch.Tensor, grid_t: torch.Tensor,
                   gamma: int, fp32: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2 in both directions: (c^lo(x_i^s, x_a^t), c^lo(x_a^t, x_i^s)), each (G, N, N) indexed [i, a].

    maps: (G, N, P, D) backbone cells; grid: (G, N, P, 2) cell centres in source-image coordinates
    (normalised to [0, 1] per image). For each cell p, the location-matched cell m(p) is the
    spatially closest cell of the other view, the feature-matched cell m'(p) the nearest in feature
    L2 distance; each side averages cos over its `gamma` best pairs (smallest distance), and the
    affinity is 0.5 * (location + feature), as in the paper's pseudo-code.

    `fp32=True` computes it in float32 even under autocast: the feature distances |q|² + |q'|² - 2 q·q'
    cancel, and bf16 dot products shift them enough to pick other feature partners (docs/lvmmed.md).
    """
    if fp32 and torch.is_autocast_enabled(maps_s.device.type):
        with torch.autocast(maps_s.device.type, enabled=False):
            return local_affinity(maps_s.float(), maps_t.float(), grid_s.float(), grid_t.float(), gamma, fp32)
    dots = torch.einsum("gipd,gaqd->giapq", maps_s, maps_t)  # (G, N, N, P, P)
    norm_s, norm_t = maps_s.norm(dim=-1), maps_t.norm(dim=-1)  # (G, N, P)
    outer = norm_s[:, :, None, :, None] * norm_t[:, None, :, None, :]
    cos = dots / outer.clamp_min(1e-8)
    feat_dist = norm_s[:, :, None, :, None] ** 2 + norm_t[:, None, :, None, :] ** 2 - 2 * dots
    loc_dist = torch.cdist(grid_s[:, :, None].expand(-1, -1, grid_t.shape[1], -1, -1).flatten(1, 2),
                           grid_t[:, None].expand(-1, grid_s.shape[1], -1, -1, -1).flatten(1, 2)
                           ).view_as(cos)

    def one_way(dist: torch.Tensor, cos_: torch.Tensor) -> torch.Tensor:
        best_dist, best = dist.min(dim=-1)  # nearest partner cell for every cell (.., P)
        matched_cos = cos_.gather(-1, best[..., None]).squeeze(-1)
        keep = min(gamma, best_dist.shape[-1])
        top = best_dist.topk(keep, dim=-1, largest=False).indices
        return matched_cos.gather(-1, top).mean(-1)

    s_to_t = 0.5 * (one_way(loc_dist, cos) + one_way(feat_dist, cos))
    swap = lambda x: x.transpose(-1, -2)  # noqa: E731  (cells of t look for partners in s)
    t_to_s = 0.5 * (one_way(swap(loc_dist), swap(cos)) + one_way(swap(feat_dist), swap(cos)))
    return s_to_t, t_to_s


def vertex_affinity(z_s: torch.Tensor, z_t: torch.Tensor, local: tuple[torch.Tensor, torch.Tensor] | None,
                    alpha: float, symmetric_local: bool = True) -> torch.Tensor:
    """Eq. 3: c^v_ia = α cos(ẑ_i^s, ẑ_a^t) + (1-α) (c^lo(s->t) + c^lo(t->s)); `symmetric_local=False`
    uses the pseudo-code's single direction. `local=None` (ablation) leaves the global term only."""
    glob = F.normalize(z_s, dim=-1) @ F.normalize(z_t, dim=-1).transpose(1, 2)
    if local is None:
        return glob
    s_to_t, t_to_s = local
    return alpha * glob + (1 - alpha) * (s_to_t + t_to_s if symmetric_local else s_to_t)


def edge_affinity(z_s: torch.Tensor, z_t: torch.Tensor, edges_s: torch.Tensor, edges_t: torch.Tensor) -> torch.Tensor:
    """c^e_{ia,jb} = cos(ẑ_i^s - ẑ_j^s, ẑ_a^t - ẑ_b^t) for (i,j) in E^s, (a,b) in E^t: (G, E_s, E_t)."""

    def differences(z, edges):
        take = lambda col: torch.gather(z, 1, edges[..., col:col + 1].expand(-1, -1, z.shape[-1]))  # noqa: E731
        return F.normalize(take(0) - take(1), dim=-1)

    return differences(z_s, edges_s) @ differences(z_t, edges_t).transpose(1, 2)


def pair_affinities(cells: list[torch.Tensor], z: torch.Tensor, grids: list[torch.Tensor], edges: list[torch.Tensor],
                    pairs: list[tuple[int, int]], *, alpha: float, gamma: int, fp32: bool = True,
                    symmetric_local: bool = True, local_similarity: bool = True,
                    second_order: bool = True) -> dict[str, torch.Tensor | None]:
    """Every (s, t) view pair's affinities, the pairs' instances stacked along the group axis in `pairs`' order:
    unary, edge (None without `second_order`), edges_s, edges_t, local (both directions; None without
    `local_similarity`). Per view: cells [(G, N, P, D)], z (V, G, N, F), grids [(G, N, P, 2)], edges [(G, E, 2)]."""
    out = {key: [] for key in ("unary", "edge", "edges_s", "edges_t", "local")}
    for s, t in pairs:
        local = local_affinity(cells[s], cells[t], grids[s], grids[t], gamma, fp32) if local_similarity else None
        out["unary"].append(vertex_affinity(z[s], z[t], local, alpha, symmetric_local))
        out["edge"].append(edge_affinity(z[s], z[t], edges[s], edges[t]) if second_order else None)
        out["edges_s"].append(edges[s])
        out["edges_t"].append(edges[t])
        out["local"].append(local)
    cat = lambda xs: None if xs[0] is None else torch.cat(xs)  # noqa: E731
    local = None if out["local"][0] is None else tuple(map(torch.cat, zip(*out["local"])))
    return dict(unary=cat(out["unary"]), edge=cat(out["edge"]), edges_s=cat(out["edges_s"]),
                edges_t=cat(out["edges_t"]), local=local)
