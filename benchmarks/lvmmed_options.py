"""Measurements behind LVM-Med settings (docs/lvmmed.md): `local_fp32`, `gcn_last_activation`, the bound that
skips the λ-shifted solve, and `edge_noise_scale`. CPU only, about a minute on 2 cores:

    .venv/bin/python benchmarks/lvmmed_options.py [--out benchmarks/results/lvmmed_options.json]
"""
from __future__ import annotations

import argparse
import json

from medssl_bench.harness.process import configure_process

configure_process()  # before torch loads: passive OpenMP threads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

from medssl_bench.methods.blocks.graph_matching import identity_is_optimal, solve_qap  # noqa: E402
from medssl_bench.methods.blocks.lvmmed_graph import GCN, edge_affinity, gcn_adjacency, knn_edges, local_affinity  # noqa: E402


def gumbel(shape, gen):
    return -torch.log(-torch.log(torch.rand(shape, generator=gen).clamp(1e-10, 1 - 1e-10)))


def local_precision(maps_s, maps_t, grid_s, grid_t) -> dict:
    """Max abs difference of both local directions under CPU bf16 autocast vs float32, and the share of
    feature partners (nearest cell in L2) that change."""
    ref = local_affinity(maps_s, maps_t, grid_s, grid_t, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = local_affinity(maps_s, maps_t, grid_s, grid_t, 20, fp32=False)
        same = local_affinity(maps_s, maps_t, grid_s, grid_t, 20, fp32=True)
    err = max((a.float() - b).abs().max().item() for a, b in zip(low, ref))
    dots = torch.einsum("gipd,gaqd->giapq", maps_s, maps_t)
    dist = maps_s.norm(dim=-1)[:, :, None, :, None] ** 2 + maps_t.norm(dim=-1)[:, None, :, None, :] ** 2 - 2 * dots
    dots16 = torch.einsum("gipd,gaqd->giapq", maps_s.bfloat16(), maps_t.bfloat16()).float()
    dist16 = maps_s.norm(dim=-1)[:, :, None, :, None] ** 2 + maps_t.norm(dim=-1)[:, None, :, None, :] ** 2 - 2 * dots16
    changed = (dist.argmin(-1) != dist16.argmin(-1)).float().mean().item()
    return {"max_abs_err_bf16": err, "max_abs_err_fp32_option": max((a - b).abs().max().item() for a, b in zip(same, ref)),
            "vertex_affinity_err_alpha_0.8": 0.2 * 2 * err, "feature_partners_changed": changed,
            "local_range": [min(r.min().item() for r in ref), max(r.max().item() for r in ref)]}


def resnet_maps(n: int, size: int = 224):
    """Layer-4 maps of a randomly initialised ResNet-50 (BN in train mode, so activations are normalised as in
    training) for two random crops of n random-texture images; cell grids in [0, 1]."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    body = torch.nn.Sequential(*list(net.children())[:-2]).train()
    base = F.interpolate(torch.rand(n, 3, 32, 32), size=(size + 64, size + 64), mode="bilinear")
    views = [base[:, :, :size, :size], base[:, :, 64:, 64:]]
    with torch.no_grad():
        maps = [body(v) for v in views]  # (n, 2048, 7, 7)
    cells = [m.flatten(2).transpose(1, 2)[None] for m in maps]  # (1, n, 49, 2048)
    side = maps[0].shape[-1]
    centres = (torch.arange(side) + 0.5) / side
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1).reshape(-1, 2)
    grid_s = (grid * size / (size + 64))[None, None].expand(1, n, -1, -1)
    grid_t = ((grid * size + 64) / (size + 64))[None, None].expand(1, n, -1, -1)
    return cells[0], cells[1], grid_s, grid_t


def gcn_output_cosines() -> dict:
    """Pairwise cosine of the GCN's output over 16 nodes (BN-like N(0,1) inputs, fresh weights), with and without
    σ on the last layer, plain and residual form: min, mean, share of pairs below 0."""
    out = {}
    for residual in (False, True):
        for last in (False, True):
            cos_all = []
            for seed in range(20):
                torch.manual_seed(seed)
                z = torch.randn(1, 16, 128)
                gcn = GCN(128, 128, 2, residual=residual, last_activation=last)
                with torch.no_grad():
                    h = gcn(z, gcn_adjacency(knn_edges(z, 5), 16))
                c = F.normalize(h, dim=-1) @ F.normalize(h, dim=-1).transpose(1, 2)
                cos_all.append(c[0][~torch.eye(16, dtype=torch.bool)])
            c = torch.cat(cos_all)
            out[f"residual={residual},last_activation={last}"] = {
                "min": round(c.min().item(), 3), "mean": round(c.mean().item(), 3),
                "share_below_0": round((c < 0).float().mean().item(), 3)}
    return out


def shift_bound(groups: int = 40, n: int = 16) -> dict:
    """Share of noisy 16-node instances whose λ-shifted problem (shift s) the bound certifies, and whose
    target solve (1 restart x 10 steps, as training) returns the identity, per s."""
    gen = torch.Generator().manual_seed(0)
    signal = torch.randn(groups, n, 32, generator=gen)
    z_s, z_t = signal + 0.5 * torch.randn(groups, n, 32, generator=gen), signal + 0.5 * torch.randn(groups, n, 32, generator=gen)
    e_s, e_t = knn_edges(z_s, 5), knn_edges(z_t, 5)
    unary = F.normalize(z_s, dim=-1) @ F.normalize(z_t, dim=-1).transpose(1, 2) + gumbel((groups, n, n), gen)
    edge = edge_affinity(z_s, z_t, e_s, e_t) + gumbel((groups, 80, 80), gen)
    eye = torch.eye(n)
    rows = {}
    for s in (0.4, 2.0, 6.4, 20.0, 30.0, 40.0, 80.0):
        shifted = unary + s * (2 * eye - 1)
        proven = identity_is_optimal(shifted, edge, e_s, e_t).float().mean().item()
        solved = solve_qap(shifted, edge, e_s, e_t, restarts=1, iters=10)
        rows[str(s)] = {"bound_certifies": proven, "solver_returns_identity": (solved == eye).all(-1).all(-1).float().mean().item()}
    return rows


def noise_accuracy(groups: int = 40, n: int = 16) -> dict:
    """Forward matching accuracy (share of nodes matched to themselves, solver 8 x 50 as training) on 16-node
    groups, with Gumbel(0, 1) on both terms, on c^v only, or none; embeddings at two levels of view agreement."""
    out = {}
    for spread in (0.3, 1.0):
        gen = torch.Generator().manual_seed(2)
        signal = torch.randn(groups, n, 32, generator=gen)
        z_s = signal + spread * torch.randn(groups, n, 32, generator=gen)
        z_t = signal + spread * torch.randn(groups, n, 32, generator=gen)
        e_s, e_t = knn_edges(z_s, 5), knn_edges(z_t, 5)
        unary = F.normalize(z_s, dim=-1) @ F.normalize(z_t, dim=-1).transpose(1, 2)
        edge = edge_affinity(z_s, z_t, e_s, e_t)
        g_u, g_e = gumbel(unary.shape, gen), gumbel(edge.shape, gen)
        row = {"diagonal_cosine": round(unary.diagonal(dim1=1, dim2=2).mean().item(), 2)}
        for name, (u, e) in {"none": (unary, edge), "vertex_only": (unary + g_u, edge),
                             "both": (unary + g_u, edge + g_e)}.items():
            v = solve_qap(u, e, e_s, e_t, restarts=8, iters=50)
            row[name] = round(v.diagonal(dim1=1, dim2=2).mean().item(), 3)
        out[f"view_noise_{spread}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {"local_resnet50_random_init_16x49x2048": local_precision(*resnet_maps(16))}
    gen = torch.Generator().manual_seed(1)
    relu_maps = [F.relu(torch.randn(1, 16, 49, 2048, generator=gen)) for _ in range(2)]
    grid = torch.rand(1, 16, 49, 2, generator=gen)
    result["local_relu_gaussian_16x49x2048"] = local_precision(relu_maps[0], relu_maps[1], grid, grid.flip(2))
    result["gcn_output_cosine"] = gcn_output_cosines()
    result["target_identity_by_shift"] = shift_bound()
    result["forward_accuracy_by_noise"] = noise_accuracy()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
