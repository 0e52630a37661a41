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

from medssl_bench.harness.config import INIT_NONE
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
        # SimCLR paper (arXiv 2002.05709) Sec. 2.3 "Default setting": ResNet-50 from random weights, 224 px, batch
        # 4096, 100 epochs, LARS lr 4.8 = 0.3 x B/256, wd 1e-6, 10 linear warm-up epochs then cosine to 0 without
        # restarts, no clipping; LARS momentum 0.9 (google-research/simclr run.py:175). tau 0.1: Table 5's best at
        # B 4096 and the repo's ImageNet command (README.md:102). Projector 2048 -> 128 (constructor). That command
        # is now SimCLR v2's (lr 0.075 x sqrt(B), wd 1e-4): the same lr 4.8 at B 4096; bench scales linearly, as
        # the v1 paper, so `benchmark` (B 256) runs lr 0.3.
        "paper": dict(backbone="resnet50", init=INIT_NONE, epochs=100, batch_size=4096, image_size=224,
                      optimizer="lars", base_lr=0.3, lr_scaling="linear", lr_schedule="cosine", warmup_epochs=10,
                      min_lr_ratio=0.0, momentum=0.9, weight_decay=1e-6, clip_grad=None, temperature=0.1),
        "benchmark": {},  # the paper's settings at the shared budget (harness.config.BENCHMARK_BUDGET)
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
