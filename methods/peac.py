"""PEAC (Zhou et al., BMVC 2023, arXiv 2312.00335): patch order prediction + appearance recovery + global and
local (grid-matched) consistency with an EMA teacher, on a ResNet instead of the paper's Swin-B.

The objective as the official code (github.com/jlianglab/PEAC) optimises it; docs/methods.md, "PEAC".
The stride-32 map has one location per 32-px cell of the grid-aligned views (methods/blocks/peac_views.py; CNN
receptive fields make the correspondence approximate). Per sample, view 1 gets the Models Genesis appearance
distortions (methods.blocks.distortions) or its cells permuted in pixel space. Views arrive normalised (harness.data,
on the device): the distortions run on view 1 mapped back to [0, 1], then normalised again; the restoration
target is the clean, normalised view 1 (2.1 b). The exported backbone is the student's, as the lab's
fine-tuning loader used. The expanders are the official MLP (Linear-LN-ReLU twice, a bias-free last Linear).
BN safety (docs/methods.md, "PEAC"): the teacher runs in eval mode by default, as the official teacher does from its
first validation on, normalising with the student's running statistics; check_config warns below 16 images per BN
process. `normalisation` "cxr" re-normalises the views with the official ChestX-ray14 mean/std.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from optuna.distributions import FloatDistribution
from torch import nn

from medssl_bench.harness.backbones import feature_map
from medssl_bench.harness.config import INIT_NONE
from medssl_bench.harness.errors import UserError
from medssl_bench.methods.blocks.distortions import bezier_intensity, local_pixel_shuffle, paint
from medssl_bench.harness.method_api import SSLMethod, StepInfo, step_generator
from medssl_bench.methods.blocks.peac_views import (NORMALISATIONS, GridViews, Normalisation, grid_cells,
                                                     mlp_expander, permute_cells)

CELL = 32  # ResNet stride: one feature-map location per 32x32-px cell, as Swin-B's tokens in PEAC
PAPER_GLOBAL_DIM = 8192  # the dimension the paper's global weight 1e5 was set for
BN_MIN_PER_PROCESS = 16  # views per rank: v1 and v2 share one BN pass, so 32 images per BN forward
TEACHER_BN = ("eval", "train")


def tokens(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C): one token per cell, row-major, as the Swin's."""
    return maps.flatten(2).transpose(1, 2)


def local_loss(l1_s, l2_s, l1_t, l2_t, m1, m2) -> torch.Tensor:
    """1/2 [MSE(l1_s[m1], l2_t[m2]) + MSE(l1_t[m1], l2_s[m2])] over matched cells; tokens (B, h*w, D), masks
    (B, h*w) with equal counts per sample, so the k-th selected row of each side shows the same cell."""
    if not m1.any():  # no unshuffled sample: zero, but keep the expander in the graph (DDP)
        return 0.0 * (l1_s.sum() + l2_s.sum())
    return 0.5 * (F.mse_loss(l1_s[m1], l2_t[m2]) + F.mse_loss(l1_t[m1], l2_s[m2]))


class PEAC(SSLMethod):
    summary = "PEAC (Zhou et al. 2023): order prediction + appearance recovery + global/local EMA-teacher consistency"
    # Paper values inside: lr 0.1, teacher momentum 0.999, global weight 1e5, local weight 1.
    search_space = {
        "base_lr": FloatDistribution(0.01, 1.0, log=True),
        "momentum_base": FloatDistribution(0.99, 0.9999),
        "global_weight": FloatDistribution(1e4, 1e6, log=True),
        "local_weight": FloatDistribution(0.1, 10.0, log=True),
    }
    # how far (in cells) the two views may be shifted on the shared canvas; check_config keeps them overlapping
    views = {"max_cell_offset": 4}
    profiles = {
        # PEAC single-node script (github.com/jlianglab/PEAC): SGD lr 0.1 momentum 0.9 wd 0, 5 warm-up epochs + cosine, 400 epochs,
        # batch 8, EMA 0.999 -> 1. ResNet-50 at 448 px: its 14x14 map is the exact analogue of Swin-B's 14x14
        # tokens of 32-px cells (196 order classes, cell offsets 0..4, a 19-cell canvas), so the task is
        # unchanged. 224 px (7x7) is cheaper: --image-size 224 --set max_cell_offset=3. Sources, in
        # global_local_popar_swin.py: batch 8, lr 0.1, 400 epochs (:28-:31); SGD momentum 0.9, wd 0 (:234); random
        # init, no weights loaded (:212-:213); cosine to 0 after 5 warm-up epochs (step_decay, :54-:62); no clipping;
        # loss L_order + L_restore + 1e5 L_global + L_local (:305-:309).
        "paper": dict(backbone="resnet50", init=INIT_NONE, epochs=400, batch_size=8, image_size=448, optimizer="sgd",
                      base_lr=0.1, lr_scaling="none", lr_schedule="cosine", warmup_epochs=5, min_lr_ratio=0.0,
                      momentum=0.9, weight_decay=0.0, clip_grad=None, momentum_base=0.999, max_cell_offset=4,
                      global_weight=1e5, local_weight=1.0, order_weight=1.0, restore_weight=1.0),
        # The budget's 224 px is a 7x7 map: offsets 0..3 keep the views overlapping (check_config).
        "benchmark": dict(max_cell_offset=3),
        # CPU smoke: 64-px views of 2x2 cells, the smallest grid where order prediction (4 classes) and cell
        # matching mean something; offsets 0..1 keep >= 1 shared cell. Smaller expanders, faster teacher.
        "quick": dict(epochs=2, batch_size=32, image_size=64, optimizer="sgd", base_lr=0.05, lr_scaling="none",
                      weight_decay=0.0, momentum_base=0.99, max_cell_offset=1, global_dim=1024, local_dim=128),
    }

    def __init__(self, backbone, feat_dim, global_dim: int = 8192, local_dim: int = 512, global_weight: float = 1e5,
                 local_weight: float = 1.0, order_weight: float = 1.0, restore_weight: float = 1.0,
                 shuffle_p: float = 0.5, shuffle_windows: int = 40, momentum_base: float = 0.999,
                 teacher_bn: str = "eval", normalisation: str = "imagenet", *, image_size: int, seed: int):
        super().__init__(backbone, feat_dim)
        self.grid = grid_cells(image_size, CELL, 0)  # cells per side: image_size's alone (offsets: check_config)
        self.order_head = nn.Conv2d(feat_dim, self.grid ** 2, 1)  # per location: which cell of the clean view it shows
        self.restore_head = nn.Sequential(nn.Conv2d(feat_dim, CELL * CELL * 3, 1), nn.PixelShuffle(CELL))
        self.global_expander = mlp_expander(feat_dim, global_dim)  # on the pooled map
        self.local_expander = mlp_expander(feat_dim, local_dim)  # on each location's token
        # The teacher's order/restore outputs are never used, so it copies only what the losses read.
        self.teacher = copy.deepcopy(nn.ModuleDict(dict(backbone=backbone, global_expander=self.global_expander,
                                                        local_expander=self.local_expander)))
        deactivate_requires_grad(self.teacher)
        self.teacher.train(teacher_bn == "train")
        # 1e5 compensates the mean over 8192 dims (1e5 * MSE ~ 12 (2 - 2 cos)); keep that for any dim.
        self.global_scale = global_weight * global_dim / PAPER_GLOBAL_DIM
        self.weights = dict(local=local_weight, order=order_weight, restore=restore_weight)
        self.shuffle_p, self.shuffle_windows = shuffle_p, shuffle_windows
        self.momentum_base, self.seed, self.teacher_bn = momentum_base, seed, teacher_bn
        self.norm = Normalisation(normalisation)  # the network input's mean/std

    @classmethod
    def check_config(cls, cfg, world_size):
        grid_cells(cfg["image_size"], CELL, cfg["max_cell_offset"])
        for key, allowed in (("teacher_bn", TEACHER_BN), ("normalisation", tuple(NORMALISATIONS))):
            if cfg.get(key, allowed[0]) not in allowed:  # absent: a run recorded before the setting existed
                raise UserError(f"peac setting {key}={cfg[key]!r}: choose one of {', '.join(allowed)}")
        per_process = cfg["batch_size"] // world_size
        if per_process < BN_MIN_PER_PROCESS and not (cfg.get("sync_bn") and world_size > 1):
            warnings.warn(f"peac: {per_process} images per process is below {BN_MIN_PER_PROCESS}: the ResNet's "
                          "BatchNorm statistics come from few images (the official batch 8 suits a LayerNorm Swin). Use "
                          "--batch-size >= 16 per process (lr rule: docs/methods.md, \"PEAC\") or --set sync_bn=true "
                          "under DDP", UserWarning, stacklevel=2)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher_bn == "eval":  # the harness sets train mode every epoch: keep the teacher out of it
            self.teacher.eval()
        return self

    @classmethod
    def transform(cls, image_size, views):
        return GridViews(image_size, CELL, views["max_cell_offset"])

    @classmethod
    def image_view_count(cls, views):
        return 2  # then the two overlap masks

    def distort(self, view1: torch.Tensor, generator: torch.Generator):
        """(input, order target, shuffled flags): per sample with p = shuffle_p its cells permuted, else the
        appearance distortions (local shuffle always, Bezier p 0.9, paint p 0.9) with the identity order."""
        b, device, cells = view1.shape[0], view1.device, self.grid ** 2
        shuffled = torch.rand(b, device=device, generator=generator) < self.shuffle_p
        perm = torch.rand(b, cells, device=device, generator=generator).argsort(1)
        perm = torch.where(shuffled[:, None], perm, torch.arange(cells, device=device))
        out, plain = permute_cells(view1, perm, CELL), ~shuffled
        if plain.any():
            x = self.norm.to_unit(view1[plain]).clamp(0, 1)
            x = local_pixel_shuffle(x, generator, windows=self.shuffle_windows, p=1.0)
            x = paint(bezier_intensity(x, generator, p=0.9), generator, p=0.9, outpaint_p=0.8)
            out[plain] = self.norm.from_unit(x)
        return out, perm, shuffled

    def training_loss(self, views: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        view1, view2, m1, m2 = views
        view1, view2 = self.norm(view1), self.norm(view2)
        b = view1.shape[0]
        distorted, perm, shuffled = self.distort(view1, step_generator(self.seed, step, view1.device))
        both = torch.cat([distorted, view2])  # one pass each for student and teacher: BN sees both views
        maps = feature_map(self.backbone, both)
        with torch.no_grad():
            maps_t = feature_map(self.teacher["backbone"], both)
            g1_t, g2_t = F.normalize(self.teacher["global_expander"](maps_t.mean((2, 3))), dim=1).chunk(2)
            l1_t, l2_t = self.teacher["local_expander"](tokens(maps_t)).chunk(2)
        g1_s, g2_s = F.normalize(self.global_expander(maps.mean((2, 3))), dim=1).chunk(2)
        l1_s, l2_s = self.local_expander(tokens(maps)).chunk(2)
        order_logits = self.order_head(maps[:b])
        keep = ~shuffled[:, None]  # the local loss compares cells only where view 1 keeps its order
        return {
            "loss_order": self.weights["order"] * F.cross_entropy(order_logits, perm.view(b, self.grid, self.grid)),
            "loss_restore": self.weights["restore"] * F.mse_loss(self.restore_head(maps[:b]), view1),
            "loss_global": self.global_scale * (F.mse_loss(g1_s, g2_t) + F.mse_loss(g2_s, g1_t)),
            "loss_local": self.weights["local"] * local_loss(l1_s, l2_s, l1_t, l2_t, m1.bool() & keep,
                                                             m2.bool() & keep),
            "order_acc": (order_logits.argmax(1).flatten(1) == perm).float().mean().detach(),
        }

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        momentum = cosine_schedule(step.step, step.max_steps, self.momentum_base, 1.0)
        for name in ("backbone", "global_expander", "local_expander"):
            update_momentum(getattr(self, name), self.teacher[name], m=momentum)
        if self.teacher_bn == "eval":  # update_momentum moves parameters only; an eval-mode BN reads these
            for mine, its in zip(self.backbone.buffers(), self.teacher["backbone"].buffers()):
                its.copy_(mine)
