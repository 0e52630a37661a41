"""Backbones: torchvision ResNets whose state dict *is* the checkpoint contract.

The classifier is replaced by `Identity`, so `state_dict()` has exactly the torchvision keys
(`conv1.weight`, `bn1.*`, `layer1..4.*`) with no prefix and no `fc.*`.
"""
from __future__ import annotations

import functools
import os
import shutil
import weakref

import torch
import torchvision
from torch import nn

from medssl_bench.harness.errors import UserError

# name -> (constructor, pooled feature width)
BACKBONES = {
    "resnet18": (torchvision.models.resnet18, 512),
    "resnet50": (torchvision.models.resnet50, 2048),
}


def build_backbone(name: str) -> tuple[nn.Module, int]:
    """A randomly initialised ResNet trunk returning pooled features, and its feature width."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}")
    constructor, width = BACKBONES[name]
    model = constructor(weights=None)  # never download: weights enter via `bench import-checkpoint`
    model.fc = nn.Identity()
    return model, width


def feature_map(resnet: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last convolutional feature map (B, C, H/32, W/32), before average pooling; compiled for a ResNet
    passed to `compile_resnet`."""
    trunk = _compiled_trunk() if resnet in _COMPILED else _trunk
    return trunk(resnet, images)


def _trunk(resnet: nn.Module, images: torch.Tensor) -> torch.Tensor:
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images))))
    return resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(x))))


# ResNets whose feature_map runs compiled (weak: a dropped model leaves no entry; a deepcopy is not in it and runs
# eager, as nn.Module.compile leaves a copy eager too)
_COMPILED: weakref.WeakSet = weakref.WeakSet()


@functools.cache
def _compiled_trunk():
    """One compiled function for every ResNet (its modules are inputs, so copies share a graph), made on first use."""
    return torch.compile(_trunk, dynamic=False)


def compile_resnet(resnet: nn.Module) -> None:
    """torch.compile a ResNet in place, both ways methods call it: `resnet(images)` (pooled features; through
    nn.Module.compile, which keeps the parameter names, so checkpoints, exports and resume are unchanged) and
    `feature_map(resnet, images)` (LVM-Med, VICRegL, PEAC). Static shapes: a method feeds a few fixed view sizes
    (DINO: global and local crops), each compiled once for its own size rather than one graph for any size."""
    resnet.compile(dynamic=False)
    _COMPILED.add(resnet)


def check_compile(cfg: dict) -> None:
    """`compile` on a CPU host: inductor builds its CPU kernels with a C++ compiler and, without one, fails inside
    the first step with its own traceback. Look first, where inductor looks (its `cpp.cxx`: $CXX, else g++; its None
    entry, a conda-installed gcc, only when TORCH_INDUCTOR_INSTALL_GXX is set), before a run folder exists."""
    if not cfg.get("compile") or torch.cuda.is_available() or os.getenv("TORCH_INDUCTOR_INSTALL_GXX"):
        return
    from torch._inductor import config as inductor_config

    search = inductor_config.cpp.cxx
    names = [name for name in (search if isinstance(search, (list, tuple)) else [search]) if name]
    if not any(shutil.which(name) for name in names):
        raise UserError(f"--compile on a CPU needs a C++ compiler (torch.compile builds its CPU kernels with one); "
                        f"{' or '.join(names) or 'none'} not found: install g++ (or set CXX), or drop --compile")
