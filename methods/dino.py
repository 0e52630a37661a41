"""DINO (Caron et al., ICCV 2021) with a ResNet: self-distillation from an EMA teacher over
global and local crops, with a centred, sharpened teacher.

Heads, loss (with centring and teacher-temperature warm-up), multi-crop views and the momentum
update are lightly's. The student's last layer is frozen for `freeze_last_layer` epochs by
dropping its gradients after backward, as in the original code.
"""
from __future__ import annotations

import copy

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import DINOTransform
from lightly.utils.scheduler import cosine_schedule
from optuna.distributions import FloatDistribution

from medssl_bench.harness.config import INIT_NONE
from medssl_bench.harness.method_api import SSLMethod, StepInfo


class DINO(SSLMethod):
    summary = "DINO (Caron et al. 2021): self-distillation with an EMA teacher over multi-crop views"
    # DINO's ablations: teacher temperature 0.02-0.07, momentum 0.9-0.999.
    search_space = {
        "base_lr": FloatDistribution(0.01, 1.0, log=True),
        "weight_decay": FloatDistribution(1e-6, 1e-3, log=True),
        "teacher_temp": FloatDistribution(0.02, 0.07),
        "momentum_base": FloatDistribution(0.9, 0.999),
    }
    # multi-crop (lightly's DINOTransform), main_dino.py's defaults for local crops: 6 x 96 px
    views = {"n_local_views": 6, "local_crop_size": 96, "global_crop_scale": (0.14, 1.0),
             "local_crop_scale": (0.05, 0.14)}
    profiles = {
        # DINO's ResNet-50 command (facebookresearch/dino README.md:207; 8 GPUs x 64 = batch 512): ResNet-50 from
        # random weights, SGD (momentum 0.9) lr 0.03 x B/256 (main_dino.py scales linearly), wd 1e-4 constant
        # (--weight_decay_end 1e-4), global crops (0.14, 1), local crops (0.05, 0.14); the rest at main_dino.py's
        # defaults (:55-:112): 100 epochs, 10 warm-up epochs, cosine to min lr 1e-6 (ratio 1.7e-5 at lr 0.06),
        # 8 local crops of 96 px, out_dim 65536, teacher temp 0.04 without warm-up, momentum 0.996, clip 3.0,
        # last layer frozen 1 epoch.
        "paper": dict(backbone="resnet50", init=INIT_NONE, epochs=100, batch_size=512, image_size=224,
                      optimizer="sgd", base_lr=0.03, lr_scaling="linear", lr_schedule="cosine", warmup_epochs=10,
                      min_lr_ratio=1.7e-5, momentum=0.9, weight_decay=1e-4, clip_grad=3.0, n_local_views=8,
                      local_crop_size=96, teacher_temp=0.04, warmup_teacher_temp_epochs=0, momentum_base=0.996,
                      freeze_last_layer=1),
        "benchmark": {},  # the paper's settings at the shared budget (harness.config.BENCHMARK_BUDGET)
        # CPU smoke. center_momentum 0.99: at batch 16 the centre must average over ~100 batches to
        # be as stable as DINO's 0.9 at batch 1024; with 0.9 the teacher drifts to uniform outputs.
        "quick": dict(epochs=2, batch_size=32, image_size=64, optimizer="sgd", base_lr=0.5,
                      weight_decay=1e-5, hidden_dim=512, bottleneck_dim=64, output_dim=1024,
                      n_local_views=2, local_crop_size=32, momentum_base=0.99, freeze_last_layer=0,
                      center_momentum=0.99, clip_grad=3.0),
    }

    def __init__(self, backbone, feat_dim, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 output_dim: int = 65536, batch_norm_head: bool = False, freeze_last_layer: int = 1,
                 teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04, warmup_teacher_temp_epochs: int = 0,
                 student_temp: float = 0.1, center_momentum: float = 0.9, momentum_base: float = 0.996):
        super().__init__(backbone, feat_dim)
        self.student_head = DINOProjectionHead(feat_dim, hidden_dim, bottleneck_dim, output_dim,
                                               batch_norm=batch_norm_head, freeze_last_layer=freeze_last_layer)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(feat_dim, hidden_dim, bottleneck_dim, output_dim,
                                               batch_norm=batch_norm_head)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.momentum_base = momentum_base
        self.criterion = DINOLoss(output_dim=output_dim, warmup_teacher_temp=warmup_teacher_temp,
                                  teacher_temp=teacher_temp, warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
                                  student_temp=student_temp, center_momentum=center_momentum)

    @classmethod
    def transform(cls, image_size, views):
        return DINOTransform(global_crop_size=image_size, local_crop_size=views["local_crop_size"],
                             n_local_views=views["n_local_views"], global_crop_scale=tuple(views["global_crop_scale"]),
                             local_crop_scale=tuple(views["local_crop_scale"]), normalize=None)

    def training_loss(self, views: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        global_views, local_views = views[:2], views[2:]
        with torch.no_grad():
            teacher_out = self.teacher_head(self.teacher_backbone(torch.cat(global_views))).chunk(2)
        # one backbone pass per crop size (global crops together, local crops together)
        student_out = list(self.student_head(self.backbone(torch.cat(global_views))).chunk(2))
        if local_views:
            student_out += self.student_head(self.backbone(torch.cat(local_views))).chunk(len(local_views))
        return {"loss": self.criterion(list(teacher_out), student_out, epoch=step.epoch)}

    def after_backward(self, step: StepInfo) -> None:
        self.student_head.cancel_last_layer_gradients(step.epoch)

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        momentum = cosine_schedule(step.step, step.max_steps, self.momentum_base, 1.0)
        update_momentum(self.backbone, self.teacher_backbone, m=momentum)
        update_momentum(self.student_head, self.teacher_head, m=momentum)
