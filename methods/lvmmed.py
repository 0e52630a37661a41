"""LVM-Med (Nguyen et al., NeurIPS 2023): second-order graph matching between two views.

Per group of `graph_size` images (a batch of B images per process is ceil(B/16) independent
instances, never straddling DDP ranks; a remainder is completed from the group before it):
backbone maps -> avg pool -> projector -> kNN graph per view -> shared GCN; vertex affinities mix
global cosine and the local (location- and feature-matched cell) similarity; edge affinities
compare embedding differences along kNN edges; a QAP solve on noisy affinities is scored by
Hamming loss against the identity matching, with IMLE gradients.
As implemented, with every open choice: docs/lvmmed.md. Every choice the paper leaves open is a setting: a constructor argument, or
for the views (crop_scale) an entry of `views`.
"""
from __future__ import annotations

from functools import partial

import torch
from lightly.transforms.vicregl_transform import VICRegLViewTransform
from optuna.distributions import FloatDistribution, IntDistribution
from torch import nn

from medssl_bench.harness.backbones import feature_map
from medssl_bench.harness.config import INIT_REQUIRED
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.method_api import SSLMethod, StepInfo, step_generator
from medssl_bench.methods.blocks.crop_grid import CropFlipWithGrid, normalised, normalised_grid_of
from medssl_bench.methods.blocks.graph_matching import edge_indicator, solve_lap, solve_qap
from medssl_bench.methods.blocks.imle import CONVENTIONS, gumbel_noise, imle_hamming_matching
from medssl_bench.methods.blocks.lvmmed_graph import GCN, gcn_adjacency, knn_edges, pair_affinities
from medssl_bench.methods.blocks.matching_groups import group_index, view_pairs

FEATURE_STRIDE = 32  # ResNet: one feature cell per 32x32 input pixels


class GeometricViews:
    """Two VICRegL global views, then `n_local` local crops, each with the centre of every backbone feature cell in
    source-image coordinates normalised to [0, 1] (so cells of different images compare). The crop, flip and cell
    centres are ours (blocks/crop_grid.py: lightly 1.6.0 mis-spaces the centres); the photometric rest is lightly's
    VICRegL view (jitter, grayscale, blur; local crops: blur p 0.1, solarisation p 0.2, as VICRegLTransform's)."""

    def __init__(self, image_size: int, crop_scale: tuple, n_local: int = 0, local_size: int = 96,
                 local_scale: tuple = (0.05, 0.2)):
        self.crop = CropFlipWithGrid(image_size, tuple(crop_scale), max(1, image_size // FEATURE_STRIDE))
        self.local_crop = CropFlipWithGrid(local_size, tuple(local_scale), max(1, local_size // FEATURE_STRIDE))
        self.photometric = VICRegLViewTransform(normalize=None)  # the harness normalises on the device
        self.local_photometric = VICRegLViewTransform(gaussian_blur_prob=0.1, solarize_prob=0.2, normalize=None)
        self.kinds = [(self.crop, self.photometric)] * 2 + [(self.local_crop, self.local_photometric)] * n_local

    def __call__(self, image):
        views, grids = [], []
        for crop_flip, photometric in self.kinds:
            crop, grid = crop_flip(image)
            views.append(photometric(crop))
            grids.append(normalised(grid, image))
        return views + grids

    def device_plan(self) -> list:
        """`--augment device` (harness.device_views): per view our crop and flip, then the photometric Compose's
        ops, drawn as __call__ draws them; the grids computed in the worker from the drawn box and flip."""
        from medssl_bench.harness.device_views import View

        return [View(photometric, *crop_flip.device_parts(), grid=partial(normalised_grid_of, crop_flip))
                for crop_flip, photometric in self.kinds]


class LVMMed(SSLMethod):
    summary = "LVM-Med (Nguyen et al. 2023): second-order graph matching of two views, IMLE gradients"
    # The paper's alpha 0.8 (local vs global vertex affinity), lambda 80 (IMLE perturbation), k 5
    # (graph k-NN) sit inside; knn_k stays below graph_size 16.
    search_space = {
        "base_lr": FloatDistribution(1e-4, 1e-2, log=True),
        "alpha": FloatDistribution(0.0, 1.0),
        "lam": FloatDistribution(1.0, 200.0, log=True),
        "knn_k": IntDistribution(2, 10),
    }
    # The paper uses "multi-crop as VICRegL" without scales: lightly's defaults. Local crops are off (Algorithm 1
    # matches two views); n_local_views > 0 matches each local crop's graph with a global view's (docs/lvmmed.md).
    views = {"crop_scale": (0.2, 1.0), "n_local_views": 0, "local_crop_size": 96, "local_crop_scale": (0.05, 0.2)}
    profiles = {
        # Paper: ResNet-50 from ImageNet-1K weights (INIT_REQUIRED: a run names them, or --init none),
        # 100 epochs, batch 3200, 224 px (inferred), Adam lr 2e-3 halved four times (milestones not
        # given: evenly spaced), lambda 80, alpha 0.8, 16-node graphs, k 5, GCN 2x128 (docs/lvmmed.md).
        # No warm-up, weight decay or clipping is reported: none.
        "paper": dict(backbone="resnet50", init=INIT_REQUIRED, epochs=100, batch_size=3200, image_size=224,
                      optimizer="adam", base_lr=2e-3, lr_scaling="none", lr_schedule="step", lr_milestones=None,
                      lr_gamma=0.5, warmup_epochs=0, weight_decay=0.0, clip_grad=None, lam=80.0, alpha=0.8,
                      lambda_convention="batch_mean"),
        "benchmark": {},  # the paper's settings at the shared budget (harness.config.BENCHMARK_BUDGET)
        "quick": dict(epochs=2, batch_size=32, image_size=64, optimizer="adam", base_lr=1e-3, lr_scaling="none",
                      weight_decay=0.0),
    }

    def __init__(self, backbone, feat_dim, proj_dim: int = 128, projector_bn: bool = True, gcn_width: int = 128,
                 gcn_layers: int = 2, gcn_residual: bool = True, gcn_last_activation: bool = False,
                 graph_size: int = 16, knn_k: int = 5, alpha: float = 0.8, gamma_pairs: int = 20, local_fp32: bool = True,
                 lam: float = 80.0, lambda_convention: str = "batch_mean", vertex_noise_scale: float = 1.0,
                 edge_noise_scale: float = 1.0, noise_centered: bool = False, margin: float = 1.0,
                 symmetric_local: bool = True, second_order: bool = True, message_passing: bool = True,
                 gumbel_noise: bool = True, local_similarity: bool = True, solver_restarts: int = 8,
                 solver_iters: int = 50, target_solver_restarts: int = 1, target_solver_iters: int = 10, *,
                 seed: int):
        super().__init__(backbone, feat_dim)
        # "projector size 2048x128"; normalisation is not stated. BN centres the embeddings per batch:
        # without it a fresh projector + GCN maps all images to nearly one direction (cos 0.997) and
        # the matching cannot start (benchmarks/README.md, LVM-Med notes).
        self.projector = nn.Sequential(nn.Linear(feat_dim, proj_dim), *([nn.BatchNorm1d(proj_dim)] if projector_bn else []))
        self.gcn = GCN(proj_dim, gcn_width, gcn_layers, gcn_residual, gcn_last_activation) if message_passing else None
        if lambda_convention not in CONVENTIONS:
            raise UserError(f"lambda_convention {lambda_convention!r}: one of {', '.join(CONVENTIONS)}")
        self.hp = dict(graph_size=graph_size, knn_k=knn_k, alpha=alpha, gamma_pairs=gamma_pairs, lam=lam,
                       lambda_convention=lambda_convention, local_fp32=local_fp32, noise_centered=noise_centered,
                       noise_scale=dict(vertex=vertex_noise_scale, edge=edge_noise_scale), margin=margin,
                       symmetric_local=symmetric_local, second_order=second_order, gumbel_noise=gumbel_noise,
                       local_similarity=local_similarity, solver=dict(restarts=solver_restarts, iters=solver_iters),
                       target_solver=dict(restarts=target_solver_restarts, iters=target_solver_iters), seed=seed)

    @classmethod
    def check_config(cls, cfg, world_size):
        per_rank = cfg["batch_size"] // world_size
        if per_rank < cfg["graph_size"]:  # a remainder is completed from the previous group, so one must exist
            raise UserError(f"lvmmed matches groups of {cfg['graph_size']} images within each process: the batch "
                            f"per process ({per_rank}) must hold at least graph_size images")
        if cfg["n_local_views"] < 0 or cfg["local_crop_size"] < 1:
            raise UserError(f"n_local_views ({cfg['n_local_views']}) must be >= 0 and local_crop_size "
                            f"({cfg['local_crop_size']}) >= 1")
        if cfg["knn_k"] >= cfg["graph_size"]:
            raise UserError(f"knn_k ({cfg['knn_k']}) must be smaller than graph_size ({cfg['graph_size']})")

    @classmethod
    def transform(cls, image_size, views):
        return GeometricViews(image_size, views["crop_scale"], views["n_local_views"], views["local_crop_size"],
                              views["local_crop_scale"])

    @classmethod
    def image_view_count(cls, views):
        return 2 + views["n_local_views"]  # then one crop grid per view

    def _noise(self, shape, device, step: StepInfo, salt: int, scale: float) -> torch.Tensor:
        """Gumbel(0, 1) * scale, seeded by (seed, rank, step): exact on resume, different per rank."""
        generator = step_generator(self.hp["seed"], step, device, salt)
        return gumbel_noise(shape, device, generator, scale, self.hp["noise_centered"])

    def embed(self, views: list[torch.Tensor]):
        """Group-wise embeddings of every view (the 2 global ones, then the local crops): cells [V x (G, N, P, D)],
        z (V, G, N, F), grids [V x (G, N, P, 2)], with G groups of N = graph_size images; the last group may overlap
        the one before (blocks/matching_groups.py). Crops of one size share a backbone pass (BN sees each once)."""
        n_views = len(views) // 2  # every view brings its grid
        images, view_grids = views[:n_views], views[n_views:]
        batch = images[0].shape[0]
        index = group_index(batch, self.hp["graph_size"]).to(images[0].device)
        passes = [feature_map(self.backbone, torch.cat(images[:2]))]  # (2B, D, R, S)
        if n_views > 2:
            passes.append(feature_map(self.backbone, torch.cat(images[2:])))
        pooled = torch.cat([maps.mean((2, 3)) for maps in passes])
        z = self.projector(pooled).view(n_views, batch, -1)[:, index]
        cells = [c[index] for maps in passes for c in maps.flatten(2).transpose(1, 2).chunk(len(maps) // batch)]
        grids = [g.reshape(batch, -1, 2)[index] for g in view_grids]
        return cells, z, grids

    view_pairs = staticmethod(view_pairs)  # (blocks/matching_groups.py)

    def affinities(self, views: list[torch.Tensor]) -> dict:
        """Affinities of every pair's instances, pairs stacked along the instance axis in the order of `pairs`,
        which it returns with them (blocks/lvmmed_graph.py, pair_affinities)."""
        hp = self.hp
        cells, z, grids = self.embed(views)
        edges = [knn_edges(z_view, hp["knn_k"]) for z_view in z]
        if self.gcn is not None:
            z = torch.stack([self.gcn(z_view, gcn_adjacency(e, z.shape[2])) for z_view, e in zip(z, edges)])
        pairs = self.view_pairs(len(z))
        aff = pair_affinities(cells, z, grids, edges, pairs, alpha=hp["alpha"], gamma=hp["gamma_pairs"],
                              fp32=hp["local_fp32"], symmetric_local=hp["symmetric_local"],
                              local_similarity=hp["local_similarity"], second_order=hp["second_order"])
        return dict(aff, z=z, pairs=pairs)

    def training_loss(self, views: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        hp = self.hp
        aff = self.affinities(views)
        unary, edge, edges_s, edges_t = aff["unary"], aff["edge"], aff["edges_s"], aff["edges_t"]
        gold = torch.eye(unary.shape[-1], device=unary.device).expand_as(unary)
        if hp["gumbel_noise"]:
            noise_u = self._noise(unary.shape, unary.device, step, 0, hp["noise_scale"]["vertex"])
            noise_e = None if edge is None else self._noise(edge.shape, edge.device, step, 1, hp["noise_scale"]["edge"])
        else:  # ablation: a constant margin against the gold matching instead of noise (BB-GM)
            noise_u = -hp["margin"] * gold
            noise_e = None if edge is None else -hp["margin"] * edge_indicator(gold, edges_s, edges_t)
        # Solver effort (benchmarks/README.md): 8 restarts x 50 tabu steps is within 0.1% of the best
        # known objective on noisy 16-node instances at 1/4 the cost of 16 x 100; the lambda-shifted
        # backward problem was solved exactly by its LAP start on 200/200 instances, so 1 x 10 there. Restarts
        # are seeded by (seed, rank, step) like the noise: exact on resume, new draws each step.
        seed, seed_target = (step_generator(hp["seed"], step, "cpu", salt).initial_seed() for salt in (2, 3))
        if hp["second_order"]:
            solve = lambda u, e, es, et: solve_qap(u, e, es, et, seed=seed, **hp["solver"])  # noqa: E731
            solve_target = lambda u, e, es, et: solve_qap(u, e, es, et, seed=seed_target, **hp["target_solver"])  # noqa: E731
        else:  # ablation: first-order matching (linear assignment on vertex affinities)
            solve = solve_target = lambda u, *_: solve_lap(u)  # noqa: E731
        loss, matching = imle_hamming_matching(unary, edge, noise_u, noise_e, hp["lam"], solve, edges_s, edges_t,
                                               solve_target, hp["lambda_convention"])
        # pairs hold equally many instances, so every pair weighs alike; the global pair's accuracy is the paper's
        accuracy = matching.diagonal(dim1=1, dim2=2).detach().chunk(len(aff["pairs"]))
        out = {"loss": loss.mean(), "match_acc": accuracy[0].mean()}
        if len(accuracy) > 1:
            out["local_match_acc"] = torch.cat(accuracy[1:]).mean()
        return out
