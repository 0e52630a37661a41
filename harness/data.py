"""Pretraining data: manifest entries -> augmented views, reproducible per (seed, epoch, index).

Augmentations come from lightly/torchvision, which draw from the global RNGs. Each sample
re-seeds those RNGs from (seed, epoch, index) (`seeded_rngs`), so the views of a
sample do not depend on worker count, worker scheduling or how often a run was resumed; that is
what makes resume exact. The sampler therefore yields (epoch, index) pairs.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
from mmengine.dataset import DefaultSampler
from mmengine.model import BaseDataPreprocessor
from torch.utils.data import Dataset, Sampler, get_worker_info

from lightly.transforms.utils import IMAGENET_NORMALIZE

from medssl_bench.harness.errors import CorruptImageError, UserError
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


class BalancedSampler(Sampler):
    """(epoch, index) pairs with a per-dataset share of every epoch (`dataset_balance`, `dataset_weights`).

    An epoch keeps the corpus size N; dataset d gets q_d = N * w_d * n_d**alpha / sum(w * n**alpha) of it
    (largest-remainder rounding, so the quotas sum to N): alpha 1 with equal weights gives every image
    once (the natural epoch), alpha 0 an equal share per dataset. A dataset whose quota exceeds its size
    is over-sampled by whole shuffled passes, then a shuffled part-pass (every image once before any
    image twice, LVM-Med's "duplicating images" of minority datasets); one below is under-sampled by a
    shuffled subset, a new one every epoch. The epoch's list is shuffled, padded to a multiple of the
    world size with its own start, and dealt to ranks by stride, as mmengine's DefaultSampler; all of
    it a function of (seed, epoch), so a resumed run, on any rank, draws what an uninterrupted one does."""

    def __init__(self, dataset, groups: list[str], seed: int = 0, alpha: float = 1.0,
                 weights: dict[str, float] | None = None, rank: int | None = None, world_size: int | None = None):
        from mmengine.dist import get_dist_info

        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self.rank, self.world_size = get_dist_info() if world_size is None else (rank, world_size)
        self.members, self.quotas = dataset_shares(groups, alpha, weights)
        self.total = -(-len(groups) // self.world_size) * self.world_size

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Every rank's indices of `epoch`, before dealing (shuffled, padded)."""
        rng = np.random.default_rng(derived_seed(self.seed, epoch))
        parts = []
        for name in sorted(self.members):
            members, quota = self.members[name], self.quotas[name]
            passes, rest = divmod(quota, len(members))
            parts += [rng.permutation(members) for _ in range(passes)] + [rng.permutation(members)[:rest]]
        order = rng.permutation(np.concatenate(parts))
        return np.concatenate([order, order[: self.total - len(order)]])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in self.epoch_indices(epoch)[self.rank::self.world_size]:
            yield (epoch, int(index))

    def __len__(self) -> int:
        return self.total // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def balances_datasets(cfg: dict) -> bool:
    """Whether a config asks for anything but the natural epoch (every image once)."""
    return cfg.get("dataset_balance", 1.0) != 1.0 or bool(cfg.get("dataset_weights"))


def epoch_shares(entries: list[dict], cfg: dict) -> dict[str, int] | None:
    """Images per epoch of each dataset of a corpus under `cfg`, or None for the natural epoch."""
    if not balances_datasets(cfg):
        return None
    return dataset_shares([e["dataset"] for e in entries], cfg["dataset_balance"], cfg["dataset_weights"])[1]


def corpus_sampler(entries: list[dict], cfg: dict) -> dict | None:
    """The mmengine sampler config for a corpus: None (the engine's seeded shuffle) for the natural epoch,
    so runs that do not balance draw exactly what they drew before this option existed."""
    if not balances_datasets(cfg):
        return None
    return dict(type=BalancedSampler, groups=[e["dataset"] for e in entries], seed=cfg["seed"],
                alpha=cfg["dataset_balance"], weights=cfg["dataset_weights"])


def dataset_shares(groups: list[str], alpha: float, weights: dict[str, float] | None
                   ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(each dataset's positions in `groups`, one name per corpus entry, by sorted name; its images per epoch):
    counted here once for BalancedSampler and epoch_shares alike, so a run records the shares its sampler draws."""
    codes: dict[str, int] = {}  # hashed, not np.unique: its sort of 1M names took 5x as long
    index = np.fromiter((codes.setdefault(g, len(codes)) for g in groups), dtype=np.int64, count=len(groups))
    members = {str(name): np.flatnonzero(index == codes[name]) for name in sorted(codes)}
    return members, dataset_quotas({name: len(m) for name, m in members.items()}, alpha, weights or {})


def dataset_quotas(sizes: dict[str, int], alpha: float, weights: dict[str, float]) -> dict[str, int]:
    """Images per epoch of each dataset: sum(sizes) split in proportion to weight * size**alpha, rounded by
    largest remainder (ties to the larger dataset, then the name) so they sum exactly to the corpus size.
    alpha and the weights' values are checked with the config (harness.config); the names only here."""
    unknown = sorted(set(weights) - set(sizes))
    if unknown:
        raise UserError(f"dataset_weights names datasets the corpus does not hold: {', '.join(unknown)}; "
                        f"it holds: {', '.join(sorted(sizes))}")
    total = sum(sizes.values())
    mass = {name: weights.get(name, 1.0) * n ** alpha for name, n in sizes.items()}
    exact = {name: total * m / sum(mass.values()) for name, m in mass.items()}
    quotas = {name: int(x) for name, x in exact.items()}
    by_remainder = sorted(sizes, key=lambda name: (-(exact[name] - quotas[name]), -sizes[name], name))
    for name in by_remainder[: total - sum(quotas.values())]:
        quotas[name] += 1
    return quotas


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
        self.transform = transform if n_image_views == 0 else uint8_pixels(transform)
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
        with seeded_rngs(derived_seed(self.seed, epoch, index)):
            views = self.transform(image)
        return {"inputs": ship_views(views, self.n_image_views)}


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """The global RNGs lightly/torchvision draw from (torch, `random`, numpy: lightly's blur) seeded for one sample.
    In the main process (no loader workers) they are restored afterwards, so loading leaves the run's own draws
    alone; a loader worker's serve only its samples, each seeded anew, so it skips the restore (0.1 ms a sample)."""
    if get_worker_info() is not None:
        _seed_global_rngs(seed)
        yield
        return
    with torch.random.fork_rng(devices=[]):
        py_state, np_state = random.getstate(), np.random.get_state()
        _seed_global_rngs(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _seed_global_rngs(seed: int) -> None:
    # the CPU generator only: the views draw from nothing else, fork_rng restores nothing else, and
    # torch.manual_seed would also seed every accelerator generator (0.17 of a 0.7 ms worker share)
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def ship_views(views: list[torch.Tensor], n_image_views: int | None) -> list[torch.Tensor]:
    """The form views travel in: the first `n_image_views` (None: all) as uint8, the rest unchanged."""
    n_images = len(views) if n_image_views is None else n_image_views
    return [v if v.dtype == torch.uint8 else to_uint8(v) for v in views[:n_images]] + list(views[n_images:])


class Uint8Pixels:
    """lightly's ToTensor at the end of a view, for views that travel as uint8: a PIL image straight to its
    (C, H, W) uint8 pixels (torchvision's pil_to_tensor), the values ToTensor then `to_uint8` give, without the
    float round trip (SimCLR: 0.3 ms of 1.8 a sample at 64 px, 0.9 of 10 at 224 px; benchmarks/worker_share.py).
    Anything else goes to ToTensor."""

    def __init__(self, to_tensor: Callable):
        self.to_tensor = to_tensor

    def __call__(self, image):
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(image) if isinstance(image, Image.Image) else self.to_tensor(image)


def uint8_pixels(transform: Callable) -> Callable:
    """A copy of `transform` in which every lightly ToTensor that ends a torchvision Compose is a Uint8Pixels: its
    views are the same pixels, as uint8. A ToTensor with ops after it, and torchvision's own, stay as they are."""
    import copy

    import torchvision.transforms as v1
    from lightly.transforms.torchvision_v2_compatibility import ToTensor
    from torchvision.transforms import v2

    transform, seen = copy.deepcopy(transform), set()

    def visit(obj) -> None:
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, torch.Tensor, np.ndarray)):
            return
        seen.add(id(obj))
        if isinstance(obj, (v2.Compose, v1.Compose)) and obj.transforms and type(obj.transforms[-1]) is ToTensor:
            obj.transforms[-1] = Uint8Pixels(obj.transforms[-1])
        children = (obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple))
                    else vars(obj).values() if hasattr(obj, "__dict__") else ())
        for child in children:
            visit(child)

    visit(transform)
    return transform


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
