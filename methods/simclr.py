"""SimCLR (Chen et al., ICML 2020): two views, MLP projector, NT-Xent over the global batch.

Loss, head and views are lightly's. Both views go through the backbone as one batch, as in the
original implementation (its BN statistics cover both views).
"""
from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from optuna.distributions import FloatDistribution

from medssl_bench.harness.method_api import SSLMethod, StepInfo


class SimCLR(SSLMethod):
    summary = "SimCLR (Chen et al. 2020): contrastive NT-Xent between two augmented views"
    # Ranges bracket the SimCLR paper's sweeps (lr 0.5-1.5 x B/256 with LARS, tau 0.05-1.0).
    search_space = {
        "base_lr": FloatDistribution(0.05, 2.0, log=True),
        "weight_decay": FloatDistribution(1e-7, 1e-3, log=True),
        "temperature": FloatDistribution(0.05, 0.5),
    }
    views = {"min_scale": 0.08}  # SimCLRTransform's random-resized-crop scale floor
    profiles = {
        # SimCLR paper, ImageNet recipe: LARS, lr 0.3 x B/256, wd 1e-6, 10 warm-up epochs, cosine,
        # batch 4096, tau 0.1 (their best at batch 4096), 2-layer 2048-d projector to 128-d.
        "paper": dict(epochs=100, batch_size=4096, image_size=224, optimizer="lars", base_lr=0.3,
                      weight_decay=1e-6, warmup_epochs=10, temperature=0.1),
        # CPU smoke: small images, SGD, tau 0.2.
        "quick": dict(epochs=2, batch_size=32, image_size=64, optimizer="sgd", base_lr=0.5,
                      weight_decay=1e-5, temperature=0.2, proj_hidden_dim=512),
    }

    def __init__(self, backbone, feat_dim, temperature: float = 0.1, proj_hidden_dim: int = 2048,
                 proj_out_dim: int = 128):
        super().__init__(backbone, feat_dim)
        self.projection_head = SimCLRProjectionHead(feat_dim, proj_hidden_dim, proj_out_dim)
        # gather_distributed: negatives come from the whole global batch under DDP, as in the paper
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    @classmethod
    def transform(cls, image_size, views):
        return SimCLRTransform(input_size=image_size, min_scale=views["min_scale"], normalize=None)

    def training_loss(self, views: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        z0, z1 = self.projection_head(self.backbone(torch.cat(views))).chunk(2)
        return {"loss": self.criterion(z0, z1)}
