"""Pretraining data: manifest entries -> augmented views, reproducible per (seed, epoch, index).

Augmentations come from lightly/torchvision, which draw from the global RNGs. Each sample
re-seeds those RNGs from (seed, epoch, index) inside a forked RNG context, so the views of a
sample do not depend on worker count, worker scheduling or how often a run was resumed; that is
what makes resume exact. The sampler therefore yields (epoch, index) pairs.
"""
from __future__ import annotations

import os
import random
from typing import Any, Callable, Iterator

import numpy as np
import torch
from mmengine.dataset import DefaultSampler
from torch.utils.data import Dataset

from harness.errors import CorruptImageError


class EpochIndexSampler(DefaultSampler):
    """mmengine's DefaultSampler (seeded shuffle, rank sharding) yielding (epoch, index)."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in super().__iter__():
            yield (epoch, index)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ViewsDataset(Dataset):
    """Loads image `index` of a manifest and returns `{"inputs": [view, view, ...]}`.

    A file that cannot be decoded yields `{"error": message}` instead of raising inside a
    worker, so the main process can report it as one clear line.
    """

    def __init__(self, entries: list[dict], transform: Callable, seed: int, loader: Callable | None = None):
        self.entries = entries
        self.transform = transform
        self.seed = seed
        self.loader = loader

    def __len__(self) -> int:
        return len(self.entries)

    def _load(self, entry: dict):
        if self.loader is not None:
            return self.loader(entry)
        from harness.imageio import load_rgb

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
            seed = sample_seed(self.seed, epoch, index)
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            try:
                views = self.transform(image)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        return {"inputs": views}


def collate_views(batch: list[dict]) -> dict[str, Any]:
    """Stack view k of every sample into one tensor; pass the first decode error through."""
    for item in batch:
        if "error" in item:
            return {"error": item["error"]}
    n_views = len(batch[0]["inputs"])
    return {"inputs": [torch.stack([item["inputs"][k] for item in batch]) for k in range(n_views)]}


def default_num_workers() -> int:
    # Leave cores for the training step itself; 2-core CI machines get one loader worker.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus // 2))
