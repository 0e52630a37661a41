"""Models Genesis (Zhou et al., MICCAI 2019; MedIA 67:101840, 2021): restore the clean image from a distorted one.

2D port on a torchvision ResNet (docs/methods.md, "Models Genesis"): the ResNet is the encoder of a
U-Net whose light decoder (upsample, concatenate the skip at stride 16/8/4/2, one conv) ends in a 1x1 conv
and a sigmoid; the loss is the MSE to the clean [0,1] image (as the official code, github.com/MrGiovanni/ModelsGenesis). The distortions (methods.blocks.distortions,
the official pipeline) run batched on the device inside `training_loss`, on the un-normalised image; only the network
input is normalised. The encoder is exported as the backbone and the decoder beside it (`decoder.safetensors`,
harness.unet_decoder's layout) for the `genesis_unet` segmentation protocol. BatchNorm statistics gathered on
distorted inputs are re-estimated on clean crops before export (`bn_recalibrate_batches`; docs/methods.md).
"""
from __future__ import annotations

import copy
from itertools import islice

import torch
import torch.nn.functional as F
from optuna.distributions import FloatDistribution
from torch import nn
from torchvision import transforms as T

from medssl_bench.harness.config import INIT_NONE
from medssl_bench.harness.data import IMAGE_MEAN, IMAGE_STD
from medssl_bench.methods.blocks.distortions import GENESIS_3D_COVERAGE, genesis_distort, shuffle_windows_for_coverage
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.method_api import SSLMethod, StepInfo, step_generator
from medssl_bench.harness.unet_decoder import UNetDecoder, decode, decoder_blocks
from medssl_bench.methods.blocks.precise_bn import recalibrate_batchnorm


class CleanView:
    """One random-resized crop as a [0,1] tensor; flips and distortions follow on the device (the 2D port, docs/methods.md)."""

    def __init__(self, image_size: int, crop_scale: tuple):
        self.crop = T.Compose([T.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True), T.ToTensor()])

    def __call__(self, image):
        return [self.crop(image)]

    def device_plan(self) -> list:  # --augment device (harness.device_views): the same crop, made on the device
        from medssl_bench.harness.device_views import View

        return [View(self.crop)]


def encoder_features(resnet: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The torchvision ResNet's feature maps at strides 2, 4, 8, 16, 32."""
    stride2 = resnet.relu(resnet.bn1(resnet.conv1(images)))
    stride4 = resnet.layer1(resnet.maxpool(stride2))
    stride8 = resnet.layer2(stride4)
    stride16 = resnet.layer3(stride8)
    return [stride2, stride4, stride8, stride16, resnet.layer4(stride16)]


def _widths(resnet: nn.Module) -> list[int]:
    """Channels of `encoder_features`: the last BatchNorm of each stage says its output width."""
    last_bn = lambda stage: [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features  # noqa: E731
    return [resnet.bn1.num_features] + [last_bn(getattr(resnet, f"layer{i}")) for i in range(1, 5)]


class ModelsGenesis(SSLMethod):
    summary = "Models Genesis (Zhou et al. 2019): U-Net restores images from shuffle/Bezier/painting distortions"
    # Around the published values: SGD lr 1.0 (3D original) and 0.1 (the 2D port's choice for ResNet+BN, docs/methods.md), wd 0,
    # paint 0.9 / out-paint 0.8; local-shuffle coverage from PEAC's 2D port (0.1) to the 3D original (1.87).
    search_space = {
        "base_lr": FloatDistribution(1e-3, 1.0, log=True),
        "weight_decay": FloatDistribution(0.0, 1e-4),
        "local_coverage": FloatDistribution(0.05, 4.0, log=True),
        "paint_p": FloatDistribution(0.5, 1.0),
        "outpaint_p": FloatDistribution(0.5, 1.0),
    }
    # the crop is the only view-side draw: flips and distortions run in training_loss, on the device (the 2D port, docs/methods.md)
    views = {"crop_scale": (0.25, 1.0)}
    profiles = {
        # Spec 1.4: SGD momentum 0.9, wd 0, lr x0.5 every 40 epochs (PyTorch original). Its lr 1.0 trains a 3D
        # U-Net from scratch at batch 6; for a ResNet with BN the 2D port starts at 0.1. Batch 64 (not published
        # for 2D): 6 cubes of 64x64x32 are ~16 images of 224 px; 64 gives BN steadier statistics on a GPU.
        # From random weights, no warm-up or clipping (MrGiovanni/ModelsGenesis pytorch/Genesis_Chest_CT.py:58-64).
        # No 2D ResNet recipe is published: ResNet-50, the port's design and the other papers' backbone
        # (the lab's own 2D variant is said to be a ResNet-18: --backbone resnet18). 100 epochs at a fixed
        # schedule: the original stops early (patience 50 on the validation MSE, up to 10,000 epochs).
        "paper": dict(backbone="resnet50", init=INIT_NONE, epochs=100, batch_size=64, image_size=224, optimizer="sgd",
                      base_lr=0.1, lr_scaling="none", lr_schedule="step", lr_milestones=[40, 80], lr_gamma=0.5,
                      warmup_epochs=0, momentum=0.9, weight_decay=0.0, clip_grad=None),
        "benchmark": {},  # the paper's settings at the shared budget (harness.config.BENCHMARK_BUDGET)
        "quick": dict(epochs=2, batch_size=32, image_size=64, optimizer="adam", base_lr=1e-3, lr_scaling="none",
                      weight_decay=0.0, decoder_widths=(128, 64, 32, 16, 16)),
    }

    def __init__(self, backbone, feat_dim, decoder_widths: tuple = (256, 128, 64, 32, 16), flip_p: float = 0.4,
                 local_p: float = 0.5, local_coverage: float = GENESIS_3D_COVERAGE, nonlinear_p: float = 0.9,
                 paint_p: float = 0.9, outpaint_p: float = 0.8, bn_recalibrate_batches: int = 100, *, seed: int):
        super().__init__(backbone, feat_dim)
        self.decoder = decoder_blocks(_widths(backbone), decoder_widths)  # strides 16, 8, 4, 2, then 1
        self.head = nn.Conv2d(decoder_widths[-1], 3, 1)
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)
        self.distortion = dict(flip_p=flip_p, local_p=local_p, nonlinear_p=nonlinear_p, paint_p=paint_p,
                               outpaint_p=outpaint_p)
        self.local_coverage = local_coverage
        self.seed, self.bn_recalibrate_batches = seed, bn_recalibrate_batches

    @classmethod
    def check_config(cls, cfg, world_size):
        for key in ("flip_p", "local_p", "nonlinear_p", "paint_p", "outpaint_p"):
            if not 0 <= cfg[key] <= 1:
                raise UserError(f"models_genesis setting {key}={cfg[key]!r}: a probability must lie in [0, 1]")
        if cfg.get("bn_recalibrate_batches", 0) < 0:  # absent: a run recorded before the setting existed
            raise UserError(f"models_genesis setting bn_recalibrate_batches={cfg['bn_recalibrate_batches']!r}: "
                            "a number of batches, >= 0 (0: export the statistics gathered on distorted inputs)")
        if cfg["local_coverage"] <= 0 or len(cfg["decoder_widths"]) != 5:
            raise UserError("models_genesis: local_coverage must be > 0 and decoder_widths must name 5 widths "
                            f"(strides 16, 8, 4, 2, 1); got {cfg['local_coverage']!r}, {cfg['decoder_widths']!r}")

    @classmethod
    def transform(cls, image_size, views):
        return CleanView(image_size, views["crop_scale"])

    def restore(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> reconstruction in [0,1] (sigmoid), same size."""
        return reconstruct(self.backbone, self.decoder, self.head, images)

    def distort(self, clean: torch.Tensor, step: StepInfo) -> tuple[torch.Tensor, torch.Tensor]:
        """(distorted input, target) from clean [0,1] images, seeded by (seed, rank, step): exact on resume."""
        generator = step_generator(self.seed, step, clean.device)
        windows = shuffle_windows_for_coverage(clean.shape[2], clean.shape[3], self.local_coverage)
        return genesis_distort(clean, generator, windows=windows, **self.distortion)

    def clean_images(self, view: torch.Tensor) -> torch.Tensor:
        """The harness ships views normalised (harness.data.ViewsPreprocessor): undo it for the [0,1]
        image that the distortions and the target need (the 2D port, docs/methods.md); only the network input is normalised."""
        return (view.float() * self.std + self.mean).clamp(0, 1)

    def training_loss(self, views: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        distorted, target = self.distort(self.clean_images(views[0]), step)
        restored = self.restore((distorted - self.mean) / self.std)
        return {"loss": F.mse_loss(restored.float(), target),
                "copy_mse": F.mse_loss(distorted, target).detach()}  # the loss of returning the input as is

    def export(self, batches):
        """Encoder and decoder, copied (training state stays as it is, so resume is exact); their BatchNorm
        statistics re-estimated on the clean, undistorted crops of `bn_recalibrate_batches` training batches."""
        net = copy.deepcopy(nn.ModuleDict(dict(backbone=self.backbone, decoder=self.decoder, head=self.head)))
        if self.bn_recalibrate_batches > 0:
            clean = ((self.clean_images(views[0]) - self.mean) / self.std
                     for views in islice(batches(), self.bn_recalibrate_batches))
            recalibrate_batchnorm(net, lambda x: reconstruct(net["backbone"], net["decoder"], net["head"], x), clean)
        return {"backbone": net["backbone"], "decoder": UNetDecoder(net["decoder"], net["head"])}


def reconstruct(backbone: nn.Module, decoder: nn.ModuleList, head: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Normalised images -> reconstruction in [0,1] (sigmoid), same size."""
    return torch.sigmoid(head(decode(decoder, encoder_features(backbone, images), images.shape[-2:])))
