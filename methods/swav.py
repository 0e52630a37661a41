"""SwAV (Caron et al., NeurIPS 2020): online clustering; each crop predicts the Sinkhorn-balanced prototype
assignment (code) of the other high-resolution crops, over multi-crop views.

Loss (Sinkhorn-Knopp codes, gathered over DDP ranks), projection head, prototypes, multi-crop views and the
optional feature queue are lightly's. Prototypes are kept on the unit sphere, and their gradients are
dropped during the first `freeze_prototypes_epochs`, as the original code does.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.transforms import SwaVTransform
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from torch import nn
from torch.nn import functional as F

from medssl_bench.harness.config import INIT_NONE
from medssl_bench.harness.method_api import SSLMethod, StepInfo
from medssl_bench.methods.moco import persistent_queue


class SwAV(SSLMethod):
    summary = "SwAV (Caron et al. 2020): swapped prediction of Sinkhorn cluster codes over multi-crop views"
    # The paper's ablations (memory): prototypes 300-30000 barely matter, epsilon 0.03-0.05; tau 0.1.
    search_space = {
        "base_lr": FloatDistribution(0.05, 2.0, log=True),
        "weight_decay": FloatDistribution(1e-7, 1e-4, log=True),
        "temperature": FloatDistribution(0.05, 0.3),
        "sinkhorn_epsilon": FloatDistribution(0.01, 0.1, log=True),
        "n_prototypes": IntDistribution(100, 30000, log=True),
        "queue_length": CategoricalDistribution([0, 3840, 7680]),
    }
    # multi-crop (lightly's SwaVTransform): 2 global crops of image_size, then the low-resolution ones
    views = {"n_local_views": 6, "local_crop_size": 96, "global_crop_scale": (0.14, 1.0),
             "local_crop_scale": (0.05, 0.14)}
    profiles = {
        # SwAV's 800-epoch command (facebookresearch/swav scripts/swav_800ep_pretrain.sh: 64 GPUs x 64), ResNet-50
        # from random weights: SGD momentum 0.9 + LARC (main_swav.py:171-177), lr 4.8 at batch 4096 (= 0.3 x B/256),
        # cosine to 0.0048 (ratio 1e-3), wd 1e-6, 10 warm-up epochs (from 0.3; the harness warms up from 0), 800
        # epochs, 2 x 224 crops (0.14, 1) + 6 x 96 crops (0.05, 0.14), projector 2048 -> 128, 3000 prototypes,
        # tau 0.1, epsilon 0.05, 3 Sinkhorn iterations, prototypes frozen 313 iterations (the first epoch),
        # no queue at batch 4096. No clipping.
        "paper": dict(backbone="resnet50", init=INIT_NONE, epochs=800, batch_size=4096, image_size=224,
                      optimizer="lars", base_lr=0.3, lr_scaling="linear", lr_schedule="cosine", warmup_epochs=10,
                      min_lr_ratio=1e-3, momentum=0.9, weight_decay=1e-6, clip_grad=None, n_local_views=6,
                      local_crop_size=96, temperature=0.1, sinkhorn_epsilon=0.05, n_prototypes=3000, queue_length=0),
        # At the budget's batch 256: the repo's batch-256 command (scripts/swav_400ep_bs256_pretrain.sh:38-46): lr 0.6,
        # no warm-up, a queue of 3840 features from epoch 15 (prototypes frozen 5005 iterations, one epoch).
        "benchmark": dict(base_lr=0.6, warmup_epochs=0, queue_length=3840, queue_start_epoch=15),
        # CPU smoke: small heads, 32 prototypes, 2 local crops, no queue. With tau 0.1 / epsilon 0.05 at batch 16
        # the embeddings collapsed within 20 steps (cos 0.94 between images) and the loss settled at log(32),
        # the uniform prediction; tau 0.2, epsilon 0.03 and Adam learn (loss below log(32), cos ~0.7).
        "quick": dict(epochs=2, batch_size=32, image_size=64, optimizer="adam", base_lr=1e-3, lr_scaling="none",
                      weight_decay=1e-5, proj_hidden_dim=512, proj_out_dim=64, n_prototypes=32, temperature=0.2,
                      sinkhorn_epsilon=0.03, n_local_views=2, local_crop_size=32),
    }

    def __init__(self, backbone, feat_dim, proj_hidden_dim: int = 2048, proj_out_dim: int = 128,
                 n_prototypes: int = 3000, temperature: float = 0.1, sinkhorn_epsilon: float = 0.05,
                 sinkhorn_iterations: int = 3, freeze_prototypes_epochs: int = 1, queue_length: int = 0,
                 queue_start_epoch: int = 15):
        super().__init__(backbone, feat_dim)
        self.projection_head = SwaVProjectionHead(feat_dim, proj_hidden_dim, proj_out_dim)
        self.prototypes = SwaVPrototypes(proj_out_dim, n_prototypes)
        for layer in self.prototypes.heads:  # SwAV's prototypes are a bias-free layer: scores are cosines
            layer.register_parameter("bias", None)
        self.prototypes.normalize()
        self.criterion = SwaVLoss(temperature=temperature, sinkhorn_iterations=sinkhorn_iterations,
                                  sinkhorn_epsilon=sinkhorn_epsilon, sinkhorn_gather_distributed=True)
        # One queue per high-resolution crop, holding the global batch's features (identical on every rank,
        # so the harness's epoch-end buffer averaging keeps it); each rank scores its own 1/world share.
        self.queues = nn.ModuleList(
            persistent_queue(MemoryBankModule((queue_length, proj_out_dim), gather_distributed=True,
                                              feature_dim_first=False)) for _ in range(2 if queue_length else 0))
        self.freeze_prototypes_epochs, self.queue_start_epoch = freeze_prototypes_epochs, queue_start_epoch

    @classmethod
    def transform(cls, image_size, views):
        scales = views["global_crop_scale"], views["local_crop_scale"]
        return SwaVTransform(crop_sizes=(image_size, views["local_crop_size"]), crop_counts=(2, views["n_local_views"]),
                             crop_min_scales=tuple(s[0] for s in scales), crop_max_scales=tuple(s[1] for s in scales),
                             normalize=None)

    def embed(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Same-size crops in one pass -> unit-norm embeddings, one (B, D) tensor per crop."""
        z = F.normalize(self.projection_head(self.backbone(torch.cat(images))), dim=1)
        return list(z.chunk(len(images)))

    @torch.no_grad()
    def queue_scores(self, high_res: list[torch.Tensor], step: StepInfo) -> list[torch.Tensor] | None:
        if not self.queues:
            return None
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        earlier = [queue(z, update=True)[1][rank::world] for queue, z in zip(self.queues, high_res)]
        return [self.prototypes(z) for z in earlier] if step.epoch >= self.queue_start_epoch else None

    def training_loss(self, views: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        high_res = self.embed(views[:2])
        low_res = self.embed(views[2:]) if len(views) > 2 else []
        queued = self.queue_scores(high_res, step)
        loss = self.criterion([self.prototypes(z) for z in high_res], [self.prototypes(z) for z in low_res], queued)
        return {"loss": loss}

    def after_backward(self, step: StepInfo) -> None:
        if step.epoch < self.freeze_prototypes_epochs:  # None, not zero: no weight decay or momentum either
            for param in self.prototypes.parameters():
                param.grad = None

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        self.prototypes.normalize()  # so every forward (and every checkpoint) sees unit-norm prototypes
