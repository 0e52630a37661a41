"""Barlow Twins (Zbontar et al., ICML 2021): the cross-correlation of two views' embeddings, each
standardised over the batch, is pushed to the identity.

Loss (cross-correlation summed over DDP ranks), projector and views are lightly's. Each view goes
through the network on its own, as in the original code, so the projector's BN statistics are per view.
"""
from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from optuna.distributions import FloatDistribution

from medssl_bench.harness.config import INIT_NONE
from medssl_bench.harness.method_api import SSLMethod, StepInfo


class BarlowTwins(SSLMethod):
    summary = "Barlow Twins (Zbontar et al. 2021): cross-correlation of two views' embeddings towards identity"
    # The paper's ablations (Fig. 4, Table 5): lambda swept over ~1e-3 to 2e-2 (best 5e-3 with 8192-d).
    search_space = {
        "base_lr": FloatDistribution(0.05, 1.0, log=True),
        "weight_decay": FloatDistribution(1e-7, 1e-4, log=True),
        "lambda_param": FloatDistribution(1e-3, 2e-2, log=True),
    }
    profiles = {
        # Barlow Twins paper, Sec. 3 "Implementation details" (ImageNet, ResNet-50): 1000 epochs, batch 2048,
        # LARS, lr 0.2 x B/256 for weights (0.0048 for biases and BN parameters: the harness uses one lr,
        # so those get 0.2 too), 10 warm-up epochs, cosine decay by a factor 1000, wd 1.5e-6 (biases and
        # BN excluded from LARS adaptation and decay), projector 3 x 8192 with BN + ReLU, lambda 5e-3,
        # BYOL's augmentations; ResNet-50 from random weights, 224 px, LARS momentum 0.9 (facebookresearch/
        # barlowtwins main.py:225), no clipping. The code's defaults differ slightly from the text: wd 1e-6
        # (main.py:37) and lambda 0.0051 (main.py:39); the profile keeps the paper's 1.5e-6 and 5e-3.
        "paper": dict(backbone="resnet50", init=INIT_NONE, epochs=1000, batch_size=2048, image_size=224,
                      optimizer="lars", base_lr=0.2, lr_scaling="linear", lr_schedule="cosine", warmup_epochs=10,
                      min_lr_ratio=1e-3, momentum=0.9, weight_decay=1.5e-6, clip_grad=None, lambda_param=5e-3),
        "benchmark": {},  # the paper's settings at the shared budget (harness.config.BENCHMARK_BUDGET)
        # CPU smoke: a 512-d projector; lambda ~ 1/d as in the paper's 5e-3 for 8192-d.
        "quick": dict(epochs=2, batch_size=32, image_size=64, optimizer="lars", base_lr=0.2,
                      weight_decay=1e-5, proj_hidden_dim=512, proj_out_dim=512, lambda_param=5e-3),
    }

    def __init__(self, backbone, feat_dim, proj_hidden_dim: int = 8192, proj_out_dim: int = 8192,
                 lambda_param: float = 5e-3):
        super().__init__(backbone, feat_dim)
        self.projection_head = BarlowTwinsProjectionHead(feat_dim, proj_hidden_dim, proj_out_dim)
        # gather_distributed: the cross-correlation is summed over ranks (the original all-reduces it)
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_param, gather_distributed=True)

    @classmethod
    def transform(cls, image_size, views):
        return BYOLTransform(BYOLView1Transform(input_size=image_size, normalize=None),
                             BYOLView2Transform(input_size=image_size, normalize=None))

    def training_loss(self, views: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        z0, z1 = (self.projection_head(self.backbone(view)) for view in views)
        return {"loss": self.criterion(z0, z1)}
