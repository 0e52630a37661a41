"""`bench`'s backbone checkpoint as a dense-prediction trunk, shared by mmseg and mmdet.

`BenchResNet` and `LoadBenchImage` are plain classes here; `downstream.segmentation.model` registers them in
mmseg's registries and `downstream.detection.model` in mmdet's, so configs of either toolbox can name
them. The checkpoint contract (a bare torchvision ResNet state dict; sha256 checked when a
CheckpointRef is given) is read in one place, `harness.checkpoint_index`: no `backbone.` key prefixing.
"""
from __future__ import annotations

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from torch import nn

from medssl_bench.harness.imageio import load_rgb

# torchvision ResNet stage widths: stem (stride 2), layer1 (4), layer2 (8), layer3 (16), layer4 (32)
STAGE_CHANNELS = {"resnet18": (64, 64, 128, 256, 512), "resnet50": (64, 256, 512, 1024, 2048)}


class BenchResNet(nn.Module):
    """A torchvision ResNet trunk that loads `bench`'s backbone checkpoint contract and returns the
    stage outputs in `out_indices` (0 = stem, 1..4 = layer1..layer4). `frozen_stages` fixes the
    weights of the stem (0) and layers up to that index, as mmdet's ResNet (-1: none, 4: all);
    `norm_eval` keeps every BatchNorm in eval mode (its statistics fixed) while training.
    `ref` (a CheckpointRef) may replace `checkpoint` so the weights' recorded sha256 is checked."""

    def __init__(self, arch: str = "resnet50", checkpoint: str | None = None, ref=None,
                 out_indices=(0, 1, 2, 3, 4), frozen_stages: int = -1, norm_eval: bool = False):
        super().__init__()
        from medssl_bench.harness.backbones import build_backbone
        from medssl_bench.harness.checkpoint_index import load_checkpoint_into, strict_load

        self.resnet, _ = build_backbone(arch)
        if ref is not None:
            load_checkpoint_into(ref, self.resnet)
        elif checkpoint:
            from medssl_bench.harness.checkpoint import load_backbone_state

            state, _ = load_backbone_state(checkpoint)
            strict_load(self.resnet, state, arch, checkpoint)
        self.out_indices, self.frozen_stages, self.norm_eval = tuple(out_indices), int(frozen_stages), bool(norm_eval)
        for stage in self._stages()[: self.frozen_stages + 1]:
            stage.requires_grad_(False)

    def _stages(self) -> list[nn.Module]:
        r = self.resnet
        return [nn.ModuleList([r.conv1, r.bn1]), r.layer1, r.layer2, r.layer3, r.layer4]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_stages >= 4:  # all frozen: the whole trunk is a fixed feature extractor
            self.resnet.eval()
        for stage in self._stages()[: self.frozen_stages + 1]:
            stage.eval()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        r = self.resnet
        outs = [r.relu(r.bn1(r.conv1(x)))]
        x = r.maxpool(outs[0])
        for layer in (r.layer1, r.layer2, r.layer3, r.layer4):
            x = layer(x)
            outs.append(x)
        return tuple(outs[i] for i in self.out_indices)


class LoadBenchImage(BaseTransform):
    """Decode an image exactly as pretraining and classification do (harness.imageio: grayscale
    replicated to RGB, 16-bit windowed), RGB uint8 (H, W, 3)."""

    def transform(self, results: dict) -> dict:
        img = np.asarray(load_rgb(results["img_path"]))
        results.update(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2])
        return results
