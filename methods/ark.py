"""Ark (Ma, Pang, Gotway, Liang; MICCAI 2023, arXiv 2310.09507): supervised pretraining on several differently
labelled datasets, one head per dataset, plus consistency with an EMA teacher of the whole network. Official code:
github.com/jlianglab/Ark; what bench takes from it: docs/methods.md, "Ark".

Data come from `--labels-from` (harness.app.labelled): each epoch is a pass over dataset 1, then dataset 2, ...; a batch
of dataset k trains head k only: L = (1-c) BCE(head_k(proj(student(x''))), y) + c MSE(proj(student(x'')),
proj(teacher(x'))), BCE for every task (one-hot for multi-class, as the original), averaged over the labels that
enter it: a target below 0 (an uncertain or blank label under the `ignore` policy, `uncertain_label` and
`missing_label`, applied by the loader when it reads the labels) is left out. Pass p of P = epochs x datasets
sets c (cosine 0 -> 0.5) and the teacher momentum m (cosine 0.9 -> 1); the teacher (backbone, projector, heads) gets
its EMA after each pass (`ema_mode="epoch"`) or each step ("iteration"). The teacher is exported (the paper
fine-tunes it, 3.7); it runs in BN train mode, like BYOL's target here.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from lightly.models.modules.heads import ProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from optuna.distributions import CategoricalDistribution, FloatDistribution
from torch import nn

from medssl_bench.harness.config import INIT_REQUIRED
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.method_api import LabelLayout, SSLMethod, StepInfo


def ark_terms(logits, target, z_student, z_teacher) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE-with-logits of the dataset's head over its annotated labels, MSE of student and teacher projections);
    L = (1-c) BCE + c MSE. A target < 0 is not annotated for the loss (harness.app.labelled.IGNORE): the BCE is
    the mean over the others, so with none masked it is the official mean over all (trainer.py:27)."""
    kept = (target >= 0).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target.clamp(min=0), weight=kept, reduction="sum")
    return bce / kept.sum().clamp(min=1), F.mse_loss(z_student, z_teacher)


class RandomGamma:  # albumentations' RandomGamma(gamma_limit=(80, 120)) on a PIL image
    def __call__(self, image):
        return TF.adjust_gamma(image, self.draw())

    def draw(self) -> float:
        return float(torch.empty(1).uniform_(0.8, 1.2))

    def device_op(self):  # --augment device (harness.device_views): the same draw, kornia's gamma
        from medssl_bench.harness.device_ops import Gamma

        return Gamma(self.draw)


class SharedGeometryViews:
    """[student x'', teacher x'] as in the MICCAI code: one geometric draw (RandomResizedCrop, then
    ShiftScaleRotate(rotate_limit=10) with its defaults: shift 0.0625, scale 0.1, p 0.5) for both views, and
    OneOf[brightness/contrast 0.2, gamma 0.8-1.2] with p 0.3 on the student only. (The original's teacher view
    goes through mask-style nearest resampling; here both share one warp: the crop resized
    bilinearly, then RandomAffine's nearest.) teacher_view "whole" is Ark+:
    the teacher sees the resized whole image."""

    def __init__(self, size: int, teacher_view: str = "crop"):
        self.geometry = T.Compose([T.RandomResizedCrop(size), T.RandomApply(
            [T.RandomAffine(10, translate=(0.0625, 0.0625), scale=(0.9, 1.1))], p=0.5)])
        self.photometric = T.RandomApply([T.RandomChoice([T.ColorJitter(0.2, 0.2), RandomGamma()])], p=0.3)
        self.whole = T.Resize((size, size)) if teacher_view == "whole" else None

    def __call__(self, image) -> list[torch.Tensor]:
        shared = self.geometry(image)
        teacher = self.whole(image) if self.whole else shared
        return [TF.to_tensor(self.photometric(shared)), TF.to_tensor(teacher)]

    def device_plan(self) -> list:
        """`--augment device` (harness.device_views): the student view draws the geometry, then the photometric ops,
        as __call__ draws them; the teacher view reuses the student's geometric draw, or resizes the whole image."""
        from medssl_bench.harness.device_ops import WholeImage
        from medssl_bench.harness.device_views import SameDraw, View

        student = View(T.Compose([self.geometry, self.photometric]))
        return [student, View(None, WholeImage(self.whole)) if self.whole else SameDraw(student, n_ops=1)]


class Ark(SSLMethod):
    uses_labels = True
    summary = "Ark (Ma et al. 2023): supervised multi-dataset pretraining, per-dataset heads, EMA-teacher consistency"
    search_space = {
        "base_lr": FloatDistribution(1e-3, 1.0, log=True),  # from the realised 0.005 (profiles) to the nominal 0.3
        "momentum_teacher": FloatDistribution(0.8, 0.99),
        "consistency_max": FloatDistribution(0.1, 0.9),
        "projector": CategoricalDistribution(["linear", "mlp"]),
    }
    views = {"teacher_view": "crop"}  # "whole": Ark+, the teacher sees the whole image (SharedGeometryViews)
    profiles = {
        # Ark-6 README command (jlianglab/Ark Ark_MICCAI2023/README.md:64-71): SGD (timm, momentum 0.9, main_ark.py:58),
        # wd 0 (main_ark.py:60), batch 200, 200 epochs, 224 px, from ImageNet weights (--init imagenet, Swin-B 22k->1k:
        # here torchvision's ImageNet-1K ResNet-50, INIT_REQUIRED), projector 1376 (MLP: the released checkpoint is
        # "_mlp"), teacher momentum 0.9 -> 1, c 0 -> 0.5. ResNet-50 for Swin-B (the port). No clipping.
        # lr: nominal 0.3 with 20 warm-up epochs + cosine (--lr 0.3 --warmup-epochs 20), but engine.py:169 steps timm's
        # scheduler with the validation loss as the epoch (lr_scheduler.step(val_loss_metric)); warmup_t 20 > any
        # loss, so the run never leaves warm-up: epoch 0 at --warmup-lr 1e-6 (main_ark.py:73), then
        # lr = 1e-6 + val_loss x 0.3/20 (timm CosineLRScheduler, checked with timm 1.0.31: val loss 0.35 / 0.25 / 0.15
        # -> 0.0053 / 0.0038 / 0.0023). The released models trained at ~0.002-0.005, 1/60-1/130 of 0.3. Default: the
        # realised one, 0.005 falling by cosine to 0.002 after one warm-up epoch; the nominal recipe is
        # --lr 0.3 --set warmup_epochs=20 --set min_lr_ratio=0.
        "paper": dict(backbone="resnet50", init=INIT_REQUIRED, epochs=200, batch_size=200, image_size=224,
                      optimizer="sgd", base_lr=0.005, lr_scaling="none", lr_schedule="cosine", warmup_epochs=1,
                      min_lr_ratio=0.4, momentum=0.9, weight_decay=0.0, clip_grad=None, proj_dim=1376,
                      projector="mlp", momentum_teacher=0.9, consistency_max=0.5),
        "benchmark": {},  # the paper's settings at the shared budget (harness.config.BENCHMARK_BUDGET)
        "quick": dict(epochs=3, batch_size=32, image_size=64, optimizer="sgd", base_lr=0.05, lr_scaling="none",
                      weight_decay=0.0, proj_dim=128),
    }

    def __init__(self, backbone, feat_dim, labels: LabelLayout, proj_dim: int = 1376, projector: str = "linear",
                 momentum_teacher: float = 0.9, consistency_max: float = 0.5, ema_mode: str = "epoch",
                 uncertain_label: str = "lsr_ones", missing_label: str = "zeros"):
        # uncertain_label / missing_label are applied by the loader (harness.app.labelled.apply_label_policy)
        # when it reads a stored target matrix; they are arguments here so the config records them. Defaults:
        # Ark's for CheXpert (dataloader.py:158, LSR-Ones; blank = unknown_label 0).
        super().__init__(backbone, feat_dim)
        blocks = [(feat_dim, proj_dim, None, None)] if projector == "linear" else \
            [(feat_dim, proj_dim, None, nn.ReLU()), (proj_dim, proj_dim, None, None)]
        self.student = nn.ModuleDict(dict(backbone=backbone, projector=ProjectionHead(blocks),
                                          heads=nn.ModuleList(nn.Linear(proj_dim, n) for n in labels.n_classes)))
        self.teacher = copy.deepcopy(self.student)
        deactivate_requires_grad(self.teacher)
        self.backbone = self.teacher["backbone"]  # the exported network
        self.pass_ends = np.cumsum(labels.pass_steps)  # step within the epoch at which each pass ends
        self.momentum_teacher, self.consistency_max, self.ema_mode = momentum_teacher, consistency_max, ema_mode
        self.uncertain_label, self.missing_label = uncertain_label, missing_label
        self.head = 0  # the head of the current batch

    @classmethod
    def check_config(cls, cfg, world_size):
        for key, allowed in (("projector", ("linear", "mlp")), ("ema_mode", ("epoch", "iteration")),
                             ("teacher_view", ("crop", "whole")),
                             ("uncertain_label", ("ones", "zeros", "lsr_ones", "lsr_zeros", "ignore")),
                             ("missing_label", ("zeros", "ignore"))):
            if cfg[key] not in allowed:
                raise UserError(f"--set {key}={cfg[key]}: choose one of {', '.join(allowed)}")

    @classmethod
    def transform(cls, image_size, views):
        return SharedGeometryViews(image_size, views["teacher_view"])

    @classmethod
    def image_view_count(cls, views):
        return 2  # then the dataset index and the target (harness.app.labelled)

    def current_pass(self, step: StepInfo) -> tuple[int, int, bool]:
        """(pass p counted over the run, total passes P, whether this step ends pass p)."""
        in_epoch = step.step - step.epoch * int(self.pass_ends[-1])
        k = int(np.searchsorted(self.pass_ends, in_epoch, side="right"))
        total = step.max_epochs * len(self.pass_ends)
        return step.epoch * len(self.pass_ends) + k, total, in_epoch + 1 == self.pass_ends[k]

    def schedules(self, step: StepInfo) -> tuple[float, float]:
        """(consistency weight c, teacher momentum m) of the current pass: cosine ramps over the passes."""
        p, total, _ = self.current_pass(step)
        return (cosine_schedule(p, total, 0.0, self.consistency_max),
                cosine_schedule(p, total, self.momentum_teacher, 1.0))

    def training_loss(self, views: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        student_view, teacher_view, source, target = views
        self.head = int(source[0])
        if not bool((source == self.head).all()):
            raise RuntimeError("a batch mixes labelled datasets (the sampler must yield whole-dataset passes)")
        c, _ = self.schedules(step)
        z = self.student["projector"](self.student["backbone"](student_view))
        with torch.no_grad():
            z_teacher = self.teacher["projector"](self.teacher["backbone"](teacher_view))
        # Every head runs so DDP sees all parameters used; only head k's output enters the loss, and
        # after_backward drops the others' (zero) gradients so the optimizer leaves them untouched.
        logits = [head(z) for head in self.student["heads"]]
        unused = sum(out.sum() for i, out in enumerate(logits) if i != self.head) * 0.0
        bce, mse = ark_terms(logits[self.head], target.float(), z, z_teacher)
        return {"loss_cls": (1 - c) * bce + unused, "loss_consistency": c * mse, "bce": bce.detach(),
                "mse": mse.detach(), "consistency_weight": torch.tensor(c, device=z.device)}

    def after_backward(self, step: StepInfo) -> None:
        for i, head in enumerate(self.student["heads"]):
            if i != self.head:
                head.zero_grad(set_to_none=True)

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        _, _, pass_ends = self.current_pass(step)
        if self.ema_mode == "iteration" or pass_ends:
            update_momentum(self.student, self.teacher, m=self.schedules(step)[1])
