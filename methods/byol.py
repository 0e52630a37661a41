"""BYOL (Grill et al., NeurIPS 2020): online network predicts an EMA target's projection.

Heads, loss, views and the momentum update are lightly's; the target is updated after each
optimizer step with a cosine-scheduled momentum from `momentum_base` to 1.
"""
from __future__ import annotations

import copy

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from lightly.utils.scheduler import cosine_schedule
from optuna.distributions import FloatDistribution

from medssl_bench.harness.config import INIT_NONE
from medssl_bench.harness.method_api import SSLMethod, StepInfo


class BYOL(SSLMethod):
    summary = "BYOL (Grill et al. 2020): predict an EMA target network's projection, no negatives"
    # BYOL's ablations vary tau_base 0.9-0.999 and lr 0.1-0.4 (x B/256).
    search_space = {
        "base_lr": FloatDistribution(0.05, 2.0, log=True),
        "weight_decay": FloatDistribution(1e-7, 1e-3, log=True),
        "momentum_base": FloatDistribution(0.9, 0.999),
    }
    profiles = {
        # BYOL paper (arXiv 2006.07733) Sec. 3.3 "Implementation details": ResNet-50 from random weights, 224 px,
        # batch 4096, LARS lr 0.2 x B/256, cosine to 0 without restarts over 1000 epochs after 10 warm-up epochs
        # (the Sec. 5 ablations train 300), wd 1.5e-6 (biases and BN excluded from LARS and decay there; bench decays
        # all), target tau 0.996 -> 1 (cosine), projector/predictor 4096 -> 256 (constructor). LARS momentum 0.9: not
        # stated in the paper, the usual LARS value (as SimCLR's). No clipping.
        "paper": dict(backbone="resnet50", init=INIT_NONE, epochs=1000, batch_size=4096, image_size=224,
                      optimizer="lars", base_lr=0.2, lr_scaling="linear", lr_schedule="cosine", warmup_epochs=10,
                      min_lr_ratio=0.0, momentum=0.9, weight_decay=1.5e-6, clip_grad=None, momentum_base=0.996),
        "benchmark": {},  # the paper's settings at the shared budget (harness.config.BENCHMARK_BUDGET)
        # CPU smoke: a faster-moving target (0.99) so a few hundred steps show learning.
        "quick": dict(epochs=2, batch_size=32, image_size=64, optimizer="sgd", base_lr=0.5,
                      weight_decay=1e-5, momentum_base=0.99, proj_hidden_dim=512, pred_hidden_dim=512,
                      proj_out_dim=128),
    }

    def __init__(self, backbone, feat_dim, proj_hidden_dim: int = 4096, pred_hidden_dim: int = 4096,
                 proj_out_dim: int = 256, momentum_base: float = 0.996):
        super().__init__(backbone, feat_dim)
        self.projection_head = BYOLProjectionHead(feat_dim, proj_hidden_dim, proj_out_dim)
        self.prediction_head = BYOLPredictionHead(proj_out_dim, pred_hidden_dim, proj_out_dim)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projection_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.target_backbone)
        deactivate_requires_grad(self.target_projection_head)
        self.momentum_base = momentum_base
        self.criterion = NegativeCosineSimilarity()

    @classmethod
    def transform(cls, image_size, views):
        return BYOLTransform(BYOLView1Transform(input_size=image_size, normalize=None),
                             BYOLView2Transform(input_size=image_size, normalize=None))

    def training_loss(self, views: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        both = torch.cat(views)
        p0, p1 = self.prediction_head(self.projection_head(self.backbone(both))).chunk(2)
        with torch.no_grad():
            z0, z1 = self.target_projection_head(self.target_backbone(both)).chunk(2)
        return {"loss": 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))}

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        momentum = cosine_schedule(step.step, step.max_steps, self.momentum_base, 1.0)
        update_momentum(self.backbone, self.target_backbone, m=momentum)
        update_momentum(self.projection_head, self.target_projection_head, m=momentum)
