"""VICRegL (Bardes, Ponce & LeCun, NeurIPS 2022): VICReg on pooled (global) embeddings plus VICReg on
local feature-map embeddings matched between views, by image location and by feature distance.

Loss, heads and views (with each crop's grid of cell centres in source-image coordinates) are lightly's.
The local features are the backbone's last (B, C, h, w) map (harness.backbones.feature_map), one
embedding per cell; the crop grids have h x w cells, so cell (i, j) of a map sits at grid point (i, j).
"""
from __future__ import annotations

import math

import torch
from lightly.loss import VICRegLLoss
from lightly.models.modules.heads import VicRegLLocalProjectionHead, VICRegProjectionHead
from lightly.transforms import VICRegLTransform
from optuna.distributions import FloatDistribution

from medssl_bench.harness.backbones import feature_map
from medssl_bench.harness.config import INIT_NONE
from medssl_bench.harness.method_api import SSLMethod, StepInfo

FEATURE_STRIDE = 32  # ResNet: the last map has ceil(side / 32) cells per side


def grid_size(crop_size: int) -> int:
    return math.ceil(crop_size / FEATURE_STRIDE)


class VICRegL(SSLMethod):
    summary = "VICRegL (Bardes et al. 2022): VICReg on global embeddings and on location-matched local features"
    # The paper's Table 1/4 vary alpha 0.25-0.9; VICReg's ablations vary lambda = mu around 25.
    search_space = {
        "base_lr": FloatDistribution(0.05, 1.0, log=True),
        "weight_decay": FloatDistribution(1e-7, 1e-4, log=True),
        "alpha": FloatDistribution(0.25, 0.95),
        "lambda_param": FloatDistribution(5.0, 50.0, log=True),
        "mu_param": FloatDistribution(5.0, 50.0, log=True),
    }
    # 2 global crops of image_size, then n_local_views local ones (lightly's VICRegLTransform)
    views = {"n_local_views": 0, "local_crop_size": 96, "global_crop_scale": (0.08, 1.0),
             "local_crop_scale": (0.05, 0.2)}
    profiles = {
        # The official ResNet-50 command (facebookresearch/VICRegL README.md:135): ResNet-50 from random weights,
        # 100 epochs, batch 512, LARS (momentum 0.9, optimizers.py) lr 0.3 x B/256 (utils.py learning_schedule),
        # wd 1e-6, 2 crops of 224 px at scale (0.08, 1), no local crops, alpha 0.75; the rest at main_vicregl.py's
        # defaults (:50-:75): 10 warm-up epochs, cosine to lr x 1e-3, expander 8192-8192-8192, local projector
        # 512-512-512, lambda 25, mu 25, nu 1, 20 / 4 matches per map. One lr for all: the official local
        # projector runs at 0.1 x lr (--maps-lr-ratio, :82); bench has one lr. No clipping.
        "paper": dict(backbone="resnet50", init=INIT_NONE, epochs=100, batch_size=512, image_size=224,
                      optimizer="lars", base_lr=0.3, lr_scaling="linear", lr_schedule="cosine", warmup_epochs=10,
                      min_lr_ratio=1e-3, momentum=0.9, weight_decay=1e-6, clip_grad=None, alpha=0.75,
                      lambda_param=25.0, mu_param=25.0, nu_param=1.0, num_matches=(20, 4), n_local_views=0,
                      global_crop_scale=(0.08, 1.0)),
        "benchmark": {},  # the paper's settings at the shared budget (harness.config.BENCHMARK_BUDGET)
        # CPU smoke: small heads; at 64 px the map is 2 x 2, so at most 4 matches per map.
        "quick": dict(epochs=2, batch_size=32, image_size=64, optimizer="sgd", base_lr=0.5, weight_decay=1e-5,
                      proj_hidden_dim=512, proj_out_dim=512, local_proj_dim=128, num_matches=(4, 4)),
    }

    def __init__(self, backbone, feat_dim, proj_hidden_dim: int = 8192, proj_out_dim: int = 8192,
                 local_proj_dim: int = 512, alpha: float = 0.75, lambda_param: float = 25.0, mu_param: float = 25.0,
                 nu_param: float = 1.0, num_matches: tuple = (20, 4)):
        super().__init__(backbone, feat_dim)
        self.projection_head = VICRegProjectionHead(feat_dim, proj_hidden_dim, proj_out_dim)
        self.local_projection_head = VicRegLLocalProjectionHead(feat_dim, local_proj_dim, local_proj_dim)
        # gather_distributed: variance/covariance over the global batch, as the original's all-gather
        self.criterion = VICRegLLoss(lambda_param=lambda_param, mu_param=mu_param, nu_param=nu_param, alpha=alpha,
                                     num_matches=tuple(num_matches), gather_distributed=True)

    @classmethod
    def transform(cls, image_size, views):
        local = views["local_crop_size"]
        return VICRegLTransform(global_crop_size=image_size, local_crop_size=local, n_global_views=2,
                                n_local_views=views["n_local_views"],
                                global_crop_scale=tuple(views["global_crop_scale"]),
                                local_crop_scale=tuple(views["local_crop_scale"]),
                                global_grid_size=grid_size(image_size), local_grid_size=grid_size(local),
                                normalize=None)

    @classmethod
    def image_view_count(cls, views):
        return 2 + views["n_local_views"]  # then one crop grid per view

    def embed(self, images: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Same-size crops in one pass: per crop (global embedding (B, D), local embeddings (B, h, w, d))."""
        maps = feature_map(self.backbone, torch.cat(images))
        pooled = self.projection_head(maps.mean((2, 3)))
        local = self.local_projection_head(maps.permute(0, 2, 3, 1))
        return list(zip(pooled.chunk(len(images)), local.chunk(len(images))))

    def training_loss(self, views: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        n_images = len(views) // 2  # every crop brings its grid
        images, grids = views[:n_images], views[n_images:]
        global_features = self.embed(images[:2])
        local_features = self.embed(images[2:]) if n_images > 2 else None
        local_grids = grids[2:] if n_images > 2 else None
        # VICRegLLoss.forward returns only the mix; its two halves are computed here to log them apart.
        global_term = self.criterion._global_loss(global_features, local_features)
        local_term = self.criterion._local_loss(global_features, grids[:2], local_features, local_grids)
        alpha = self.criterion.alpha
        return {"loss": alpha * global_term + (1 - alpha) * local_term,
                "global_term": global_term.detach(), "local_term": local_term.detach()}
