"""Labelled pretraining data for methods that use labels (`SSLMethod.uses_labels`, e.g. Ark).

`bench pretrain --labels-from NAME` (repeatable) names the labelled datasets, each with its own label space:
- a prepared classification dataset in the data root (`--data-root`, default WORKSPACE/data): its TRAIN split
  only; val and test never enter pretraining (docs/methods.md, Ark). Multi-class: one-hot targets. Multi-label
  and binary (a target matrix, e.g. cxr_findings): the labels as stored (1, 0, -1 uncertain, blank) go through
  the label policy (`apply_label_policy`: uncertain_label, missing_label) once, when they are read.
- one of the synthetic phantom sets below (no downstream data needed, e.g. in CI): images drawn in memory by
  downstream.phantoms with labels read from what the generator drew (its visible-structure masks).

Datasets are read in whole passes, in the order given: `CyclicPassSampler` yields all batches of dataset 1,
then of dataset 2, ...; a batch never mixes datasets (each pass is cut to whole batches). Each sample is the
method's views followed by the dataset index and the target vector; a target below 0 (IGNORE) is left out of
the loss. Runs record what they consumed (`LabelledData.consumed`: dataset, split, n_images, content_hash,
classes, and for a target matrix the policy applied) so evaluation can flag leakage.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Sampler

from medssl_bench.harness.data import ViewsDataset, derived_seed
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.method_api import LabelLayout  # what this loader hands a label-using method

PHANTOM_SEED = 9001  # not the corpus default (0): these images are not in a `corpus synth` corpus
PHANTOM_IMAGES = 128  # per synthetic set
PHANTOM_FAMILIES = ("ct", "mr", "xray", "fundus", "dermoscopy", "ultrasound", "endoscopy", "histology")
MIN_AREA_64 = 2.0  # a structure counts as present from this many pixels (at 64 px; scaled with the size)
# name -> (task, classes, what the labels are)
PHANTOM_SETS = {
    "phantom_ct": ("multilabel", ["lungs", "lesion"], "CT slices: lungs (thorax) / a lesion visible"),
    "phantom_mr": ("binary", ["tumour"], "brain MR slices: a tumour or its oedema visible"),
    "phantom_modality": ("multiclass", list(PHANTOM_FAMILIES), "which of 8 phantom families"),
}
# What becomes of an uncertain (-1) or blank label. Ark's code (jlianglab/Ark, Ark_MICCAI2023/dataloader.py:
# 155-191, CheXpert; 438-473, MIMIC): uncertain -> Ones | Zeros | LSR-Ones U(0.55, 0.85) | LSR-Zeros U(0, 0.3),
# drawn once per label when the list is read; blank -> unknown_label 0. "ignore" (bench's) leaves the label out
# of the loss instead: no official value, a choice for sets where blank does not mean negative.
UNCERTAIN_POLICIES = ("ones", "zeros", "lsr_ones", "lsr_zeros", "ignore")
MISSING_POLICIES = ("zeros", "ignore")
LSR_RANGES = {"lsr_ones": (0.55, 0.85), "lsr_zeros": (0.0, 0.3)}  # dataloader.py:187, :189
DEFAULT_POLICY = {"uncertain_label": "lsr_ones", "missing_label": "zeros"}  # CheXpert's in Ark (dataloader.py:158)
IGNORE = -1.0  # a training target below 0: left out of the loss (methods/ark.py ark_terms)


def apply_label_policy(raw: np.ndarray, uncertain_label: str, missing_label: str,
                       rng: np.random.Generator) -> np.ndarray:
    """Training targets (float32, values in [0, 1] or IGNORE) from a raw (n, K) matrix: 1, 0, -1 uncertain,
    NaN blank. LSR values are drawn once per label (as Ark draws them when it reads the csv), from `rng`."""
    if uncertain_label not in UNCERTAIN_POLICIES or missing_label not in MISSING_POLICIES:
        raise UserError(f"label policy uncertain_label={uncertain_label}, missing_label={missing_label}: choose "
                        f"from {', '.join(UNCERTAIN_POLICIES)} and {', '.join(MISSING_POLICIES)}")
    out = np.asarray(raw, dtype=np.float32).copy()
    uncertain, blank = out == -1.0, np.isnan(out)
    if uncertain_label in LSR_RANGES:
        out[uncertain] = rng.uniform(*LSR_RANGES[uncertain_label], int(uncertain.sum()))
    else:
        out[uncertain] = {"ones": 1.0, "zeros": 0.0, "ignore": IGNORE}[uncertain_label]
    out[blank] = 0.0 if missing_label == "zeros" else IGNORE
    return out


@dataclass
class LabelledSet:
    """One labelled dataset's training samples; `targets` is (n, n_classes) float32 (one-hot for multiclass)."""

    name: str
    task: str  # multiclass | multilabel | binary
    classes: list[str]
    ids: list[str]
    targets: np.ndarray
    content_hash: str
    synthetic: bool
    paths: list[str] | None = None  # prepared datasets: image files
    images: list[np.ndarray] | None = None  # phantom sets: uint8 images in memory
    label_policy: dict | None = None  # a stored target matrix: the policy applied and what it changed

    def image(self, row: int) -> Image.Image:
        if self.images is not None:
            return Image.fromarray(self.images[row]).convert("RGB")
        from medssl_bench.harness.imageio import load_rgb

        return load_rgb(self.paths[row])

    def record(self) -> dict:
        """What a run consumed; `content_hash` names the dataset (all splits, as `bench eval` records it)."""
        return {"dataset": self.name, "split": "train", "n_images": len(self.ids), "content_hash": self.content_hash,
                "classes": self.classes, "task": self.task, "synthetic": self.synthetic,
                **({"label_policy": self.label_policy} if self.label_policy else {})}


def prepared_set(name: str, data_root: Path, policy: dict | None = None, seed: int = 0) -> LabelledSet:
    """The train split of the prepared classification dataset `data_root/name`; a target matrix goes through
    the label policy (DEFAULT_POLICY <- `policy`), LSR draws seeded by (`seed`, `name`)."""
    from medssl_bench.downstream.families import get_family

    try:
        data = get_family("classification").load(Path(data_root) / name)
    except UserError as err:
        raise UserError(f"--labels-from {name}: {err} (a prepared classification dataset in --data-root, "
                        f"or one of {', '.join(PHANTOM_SETS)})") from None
    train = data.split("train")
    common = dict(content_hash=data.meta["content_hash"], synthetic=bool(data.meta.get("synthetic")),
                  paths=[str(s.path) for s in train])
    if data.task == "multiclass":
        return LabelledSet(name, "multiclass", list(data.classes), [s.id for s in train],
                           np.eye(len(data.classes), dtype=np.float32)[[s.label for s in train]], **common)
    raw, chosen = data.target_matrix("train"), {**DEFAULT_POLICY, **(policy or {})}
    rng = np.random.default_rng([seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")])
    targets = apply_label_policy(raw, chosen["uncertain_label"], chosen["missing_label"], rng)
    record = {**chosen, "uncertain": int((raw == -1).sum()), "blank": int(np.isnan(raw).sum()),
              "ignored": int((targets < 0).sum())}
    return LabelledSet(name, data.task, list(data.classes), [s.id for s in train], targets, label_policy=record,
                       **common)


def _phantom(family: str, index: int, size: int) -> tuple[np.ndarray, dict]:
    from medssl_bench.downstream.phantoms.corpus import sample_rng
    from medssl_bench.downstream.phantoms.modalities import FAMILY_GENERATORS
    from medssl_bench.harness.imageio import percentile_window

    masks: dict = {}
    pixels = FAMILY_GENERATORS[family](sample_rng(PHANTOM_SEED, family, index), size, masks=masks)
    return (pixels if pixels.dtype == np.uint8 else percentile_window(pixels)), masks


def phantom_set(name: str, size: int) -> LabelledSet:
    """A synthetic labelled set (PHANTOM_SETS) of PHANTOM_IMAGES images of `size` px, deterministic."""
    task, classes, _ = PHANTOM_SETS[name]
    min_area = MIN_AREA_64 * (size / 64) ** 2
    present = lambda masks, *keys: float(sum(masks[k].sum() for k in keys if k in masks) >= min_area)  # noqa: E731
    images, targets = [], []
    for i in range(PHANTOM_IMAGES):
        if name == "phantom_modality":
            family = PHANTOM_FAMILIES[i % len(PHANTOM_FAMILIES)]
            image, _ = _phantom(family, i, size)
            target = [float(family == f) for f in PHANTOM_FAMILIES]
        elif name == "phantom_ct":
            image, masks = _phantom("ct", i, size)
            target = [present(masks, "lung"), present(masks, "lesion")]
        else:
            image, masks = _phantom("mr", i, size)
            target = [present(masks, "tumour", "edema")]
        images.append(image)
        targets.append(target)
    targets = np.asarray(targets, dtype=np.float32)
    digest = hashlib.sha256(f"{name}\t{size}\n".encode())
    for image, target in zip(images, targets):
        digest.update(hashlib.sha256(image.tobytes()).digest() + target.tobytes())
    return LabelledSet(name, task, list(classes), [f"{name}_{i:05d}" for i in range(PHANTOM_IMAGES)], targets,
                       digest.hexdigest(), True, images=images)


class LabelledViews(ViewsDataset):
    """The datasets concatenated; item (epoch, index) -> the method's views + [dataset index, target]."""

    def __init__(self, sets: list[LabelledSet], transform: Callable, seed: int, n_image_views: int | None = None):
        entries = [{"set": k, "row": i, "id": sid} for k, s in enumerate(sets) for i, sid in enumerate(s.ids)]
        super().__init__(entries, transform, seed, loader=self._image, n_image_views=n_image_views)
        self.sets = sets
        self.sizes = [len(s.ids) for s in sets]
        self.offsets = np.cumsum([0, *self.sizes])[:-1].tolist()

    def _image(self, entry: dict) -> Image.Image:
        return self.sets[entry["set"]].image(entry["row"])

    def __getitem__(self, key):
        out = super().__getitem__(key)
        if "inputs" in out:
            entry = self.entries[key[1] if isinstance(key, tuple) else key]
            target = torch.from_numpy(self.sets[entry["set"]].targets[entry["row"]])
            out["inputs"] += [torch.tensor(entry["set"]), target]
        return out


class CyclicPassSampler(Sampler):
    """(epoch, index) pairs: a shuffled pass over dataset 1, then dataset 2, ... in order, every epoch.

    Each pass is cut to `steps * batch_size` samples per rank (steps = n // (batch_size * world_size)), so the
    DataLoader's batches never straddle two datasets and every rank runs the same steps per pass."""

    def __init__(self, dataset: LabelledViews, batch_size: int, seed: int | None = None, shuffle: bool = True):
        from mmengine.dist import get_dist_info

        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed or 0, shuffle
        self.rank, self.world_size = get_dist_info()
        self.pass_steps = [n // (batch_size * self.world_size) for n in dataset.sizes]
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for k, (offset, n, steps) in enumerate(zip(self.dataset.offsets, self.dataset.sizes, self.pass_steps)):
            order = np.random.default_rng(derived_seed(self.seed, epoch, k)).permutation(n) if self.shuffle \
                else np.arange(n)
            for index in order[self.rank::self.world_size][: steps * self.batch_size]:
                yield (epoch, offset + int(index))

    def __len__(self) -> int:
        return sum(self.pass_steps) * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


@dataclass
class LabelledData:
    sets: list[LabelledSet]
    layout: LabelLayout

    @property
    def consumed(self) -> list[dict]:
        return [s.record() for s in self.sets]

    @property
    def corpus_info(self) -> dict:
        """Stands in for the corpus record: an id over the sets' content, their images, synthetic or not."""
        digest = hashlib.sha256("".join(f"{s.name}\t{s.content_hash}\n" for s in self.sets).encode()).hexdigest()
        flags = {s.synthetic for s in self.sets}
        return {"id": digest[:12], "n_images": sum(len(s.ids) for s in self.sets), "labelled": True,
                "synthetic": flags.pop() if len(flags) == 1 else "mixed"}

    def views(self, transform: Callable, seed: int, n_image_views: int | None) -> LabelledViews:
        return LabelledViews(self.sets, transform, seed, n_image_views)

    def sampler(self, per_rank_batch: int, seed: int) -> dict:
        return dict(type=CyclicPassSampler, batch_size=per_rank_batch, seed=seed)


def load_labelled(names: list[str] | None, data_root: Path, image_size: int, batch_size: int,
                  method: str, policy: dict | None = None, seed: int = 0) -> LabelledData:
    """The datasets named by --labels-from, in order; every one must fill at least one global batch. `policy`:
    the uncertain_label / missing_label of the run's config (DEFAULT_POLICY where absent)."""
    if not names:
        raise UserError(f"method '{method}' pretrains on labelled datasets: pass --labels-from NAME (repeatable): "
                        f"a prepared classification dataset in --data-root, or one of {', '.join(PHANTOM_SETS)}")
    if len(set(names)) != len(names):
        raise UserError(f"--labels-from names a dataset twice: {', '.join(names)}")
    sets = [phantom_set(n, image_size) if n in PHANTOM_SETS else prepared_set(n, data_root, policy, seed)
            for n in names]
    for s in sets:
        if len(s.ids) < batch_size:
            raise UserError(f"--labels-from {s.name}: {len(s.ids)} training images, fewer than --batch-size "
                            f"{batch_size}; every dataset needs one full batch per pass")
    steps = tuple(len(s.ids) // batch_size for s in sets)  # = CyclicPassSampler's per rank (batch split evenly)
    layout = LabelLayout(tuple(s.name for s in sets), tuple(len(s.classes) for s in sets), steps)
    return LabelledData(sets, layout)
