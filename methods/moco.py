"""MoCo v2 (Chen et al. 2020, arXiv 2003.04297): a query encoder contrasts each image's key, from a
momentum (EMA) key encoder, against a queue of keys from earlier batches.

Loss with queue, heads, views, momentum update and shuffle-BN are lightly's: `NTXentLoss` with a memory
bank is InfoNCE against the queue (keys enqueued after each loss, gathered over DDP ranks as MoCo's
`concat_all_gather`). The queue is made a persistent buffer so checkpoints hold it and resume is exact.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.models.utils import batch_shuffle, batch_unshuffle, deactivate_requires_grad, update_momentum
from lightly.transforms import MoCoV2Transform
from lightly.utils.scheduler import cosine_schedule
from optuna.distributions import FloatDistribution, IntDistribution

from medssl_bench.harness.data import derived_seed
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.config import INIT_NONE
from medssl_bench.harness.method_api import SSLMethod, StepInfo


def persistent_queue(bank: MemoryBankModule) -> MemoryBankModule:
    """lightly registers a memory bank's queue and pointer as non-persistent buffers: re-register them as
    persistent, so they are in the state dict that checkpoints save and resume restores."""
    for name in ("bank", "bank_ptr"):
        bank.register_buffer(name, getattr(bank, name), persistent=True)
    return bank


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class MoCo(SSLMethod):
    summary = "MoCo v2 (Chen et al. 2020): InfoNCE against a queue of momentum-encoder keys"
    # MoCo v1's ablations: K 4096-65536, m 0.99-0.9999; tau 0.07-0.2 between v1 and v2.
    search_space = {
        "base_lr": FloatDistribution(0.005, 0.3, log=True),
        "weight_decay": FloatDistribution(1e-6, 1e-3, log=True),
        "temperature": FloatDistribution(0.05, 0.5),
        "key_momentum": FloatDistribution(0.99, 0.9999),
        "queue_length": IntDistribution(4096, 131072, log=True),
    }
    profiles = {
        # MoCo v2 paper (Sec. 3 and Table 1, 200-epoch row; 800 epochs gives their best 71.1%): SGD lr 0.03 at
        # batch 256, momentum 0.9, wd 1e-4, cosine schedule, no warm-up, MLP head 2048 -> 128, tau 0.2,
        # blur augmentation; queue K 65536 and key momentum 0.999 carried over from MoCo v1 (Sec. 4).
        # The repo's v2 command (facebookresearch/moco README: main_moco.py -a resnet50 --lr 0.03 --batch-size 256
        # --mlp --moco-t 0.2 --aug-plus --cos, the rest at main_moco.py's defaults): ResNet-50 from random weights,
        # 224 px, no clipping; lr 0.03 is at batch 256, so linear scaling reproduces it.
        "paper": dict(backbone="resnet50", init=INIT_NONE, epochs=200, batch_size=256, image_size=224,
                      optimizer="sgd", base_lr=0.03, lr_scaling="linear", lr_schedule="cosine", warmup_epochs=0,
                      min_lr_ratio=0.0, momentum=0.9, weight_decay=1e-4, clip_grad=None, temperature=0.2,
                      queue_length=65536, key_momentum=0.999),
        "benchmark": {},  # the paper's settings at the shared budget (harness.config.BENCHMARK_BUDGET)
        # CPU smoke: a queue of one or two batches (holds only real keys after a step or two) and a faster key
        # encoder; Adam, because SGD at lr 0.03-0.13 either barely moved the loss in 60 steps or collapsed it.
        "quick": dict(epochs=2, batch_size=32, image_size=64, optimizer="adam", base_lr=1e-3, lr_scaling="none",
                      weight_decay=1e-5, temperature=0.2, queue_length=32, key_momentum=0.99, proj_hidden_dim=512),
    }

    def __init__(self, backbone, feat_dim, temperature: float = 0.2, queue_length: int = 65536,
                 key_momentum: float = 0.999, key_momentum_end: float | None = None, proj_hidden_dim: int = 2048,
                 proj_out_dim: int = 128, shuffle_bn: bool = True, *, seed: int):
        super().__init__(backbone, feat_dim)
        self.projection_head = MoCoProjectionHead(feat_dim, proj_hidden_dim, proj_out_dim)
        self.key_backbone = copy.deepcopy(backbone)
        self.key_projection_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.key_backbone)
        deactivate_requires_grad(self.key_projection_head)
        # MoCo v2 keeps m constant; key_momentum_end (e.g. 1.0) turns on a cosine schedule as in BYOL.
        self.momentum_range = (key_momentum, key_momentum if key_momentum_end is None else key_momentum_end)
        self.shuffle_bn, self.seed = shuffle_bn, seed
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(queue_length, proj_out_dim),
                                    gather_distributed=True)
        persistent_queue(self.criterion.memory_bank)

    @classmethod
    def check_config(cls, cfg, world_size):
        if cfg["queue_length"] < cfg["batch_size"]:
            raise UserError(f"moco: queue_length ({cfg['queue_length']}) must hold at least one global batch "
                            f"({cfg['batch_size']})")

    @classmethod
    def transform(cls, image_size, views):
        return MoCoV2Transform(input_size=image_size, normalize=None)

    @torch.no_grad()
    def keys(self, images: torch.Tensor, step: StepInfo) -> torch.Tensor:
        if not (self.shuffle_bn and _world_size() > 1):
            return self.key_projection_head(self.key_backbone(images))
        # Shuffle-BN (MoCo v1, Sec. 3.3): keys are normalised with statistics of other ranks' images, so the
        # query cannot match its key through batch statistics. Only meaningful across ranks; the permutation
        # is seeded by (seed, step) so a resumed run draws the same one.
        with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
            torch.manual_seed(derived_seed(self.seed, step.step))
            shuffled, order = batch_shuffle(images, distributed=True)
        keys = self.key_projection_head(self.key_backbone(shuffled))
        return batch_unshuffle(keys, order, distributed=True)

    def training_loss(self, views: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        query = self.projection_head(self.backbone(views[0]))
        # MoCo v2 is asymmetric: one query view, one key view (the queue takes one key per image per step)
        return {"loss": self.criterion(query, self.keys(views[1], step))}

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        momentum = cosine_schedule(step.step, step.max_steps, *self.momentum_range)
        update_momentum(self.backbone, self.key_backbone, m=momentum)
        update_momentum(self.projection_head, self.key_projection_head, m=momentum)
