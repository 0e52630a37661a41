"""Pretraining data: manifest entries -> augmented views, reproducible per (seed, epoch, index).

Augmentations come from lightly/torchvision, which draw from the global RNGs. Each sample
re-seeds those RNGs from (seed, epoch, index) inside a forked RNG context, so the views of a
sample do not depend on worker count, worker scheduling or how often a run was resumed; that is
what makes resume exact. The sampler therefore yields (epoch, index) pairs.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterator

import numpy as np
import torch
from mmengine.dataset import DefaultSampler
from mmengine.model import BaseDataPreprocessor
from torch.utils.data import Dataset

from lightly.transforms.utils import IMAGENET_NORMALIZE

from medssl_bench.harness.errors import CorruptImageError
from medssl_bench.harness.provenance import available_cpus

# Views travel as uint8 (4x less memory through loader workers, pinning and host->device copies)
# and are normalised on the device with lightly's default ImageNet statistics.
IMAGE_MEAN = tuple(IMAGENET_NORMALIZE["mean"])
IMAGE_STD = tuple(IMAGENET_NORMALIZE["std"])


class EpochIndexSampler(DefaultSampler):
    """mmengine's DefaultSampler (seeded shuffle, rank sharding) yielding (epoch, index)."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in super().__iter__():
            yield (epoch, index)


def derived_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from a tuple of integers, e.g. (seed, epoch, index)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


class ViewsDataset(Dataset):
    """Loads image `index` of a manifest and returns `{"inputs": [view, view, ...]}`.

    A file that cannot be decoded yields `{"error": message}` instead of raising inside a
    worker, so the main process can report it as one clear line.
    """

    def __init__(self, entries: list[dict], transform: Callable, seed: int, loader: Callable | None = None,
                 n_image_views: int | None = None):
        self.entries = entries
        self.transform = transform
        self.seed = seed
        self.loader = loader
        self.n_image_views = n_image_views  # leading outputs that are images (None: all)

    def __len__(self) -> int:
        return len(self.entries)

    def _load(self, entry: dict):
        if self.loader is not None:
            return self.loader(entry)
        from medssl_bench.harness.imageio import load_rgb

        return load_rgb(entry["path"], entry.get("slice"))

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        entry = self.entries[index]
        try:
            image = self._load(entry)
        except CorruptImageError as err:
            return {"error": str(err)}
        # lightly/torchvision draw from torch, `random` and numpy (e.g. lightly's blur): seed all
        # three for this sample and restore them afterwards.
        with torch.random.fork_rng(devices=[]):
            py_state, np_state = random.getstate(), np.random.get_state()
            seed = derived_seed(self.seed, epoch, index)
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            try:
                views = self.transform(image)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        return {"inputs": ship_views(views, self.n_image_views)}


def ship_views(views: list[torch.Tensor], n_image_views: int | None) -> list[torch.Tensor]:
    """The form views travel in: the first `n_image_views` (None: all) as uint8, the rest unchanged."""
    n_images = len(views) if n_image_views is None else n_image_views
    return [to_uint8(v) for v in views[:n_images]] + list(views[n_images:])


def to_uint8(view: torch.Tensor) -> torch.Tensor:
    """An un-normalised [0, 1] view made by ToTensor from 8-bit pixels, back to its exact uint8 values."""
    return view.mul(255).round_().to(torch.uint8)


def collate_views(batch: list[dict]) -> dict[str, Any]:
    """Stack view k of every sample into one tensor; pass the first decode error through."""
    for item in batch:
        if "error" in item:
            return {"error": item["error"]}
    n_views = len(batch[0]["inputs"])
    return {"inputs": [torch.stack([item["inputs"][k] for item in batch]) for k in range(n_views)]}


def default_num_workers() -> int:
    # Leave cores for the training step itself; 2-core CI machines get one loader worker.
    return max(0, min(8, available_cpus() // 2))


class ViewsPreprocessor(BaseDataPreprocessor):
    """Moves a batch to the device and turns uint8 views into normalised float tensors there."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        if "inputs" in data:
            data["inputs"] = [self.normalise(v) if v.dtype == torch.uint8 else v for v in data["inputs"]]
        return data

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:  # never let broadcasting reshape a non-image
            raise ValueError(f"uint8 views must be (batch, 3, H, W) images, got {tuple(images.shape)}")
        return (images.float() - self.mean) / self.std
