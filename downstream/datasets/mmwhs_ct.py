"""MM-WHS 2017 CT whole-heart segmentation (datasets.md B.7): a thin adapter over mmwhs.py.

Layout ct_train/ct_train_10NN_{image,label}.nii.gz (+ unlabelled ct_test/); classes from
the MM-WHS codes 205/420/500/550/600/820/850 -> 1..7, scored class 2 = left atrium (LVM-Med);
split: LVM-Med's published volume ids for the standard 1001-1020, else seeded 65/15/20 by volume.
See downstream/datasets/mmwhs.py for the rules and their sources.
"""
from __future__ import annotations

from pathlib import Path

from downstream.datasets import mmwhs

NAME = "mmwhs_ct"
MODALITY = "ct"
KIND = mmwhs.KIND
CLASSES = mmwhs.CLASSES
TARGET_CLASSES = mmwhs.TARGET_CLASSES
LAYOUT = mmwhs.layout(MODALITY)
DEFAULT_N = mmwhs.DEFAULT_N
DEFAULT_SIZE = mmwhs.DEFAULT_SIZE


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None) -> Path:
    """Read the ct_train volumes of an MM-WHS download and write `out_root/mmwhs_ct/`."""
    return mmwhs.prepare(src, out_root, modality=MODALITY, name=NAME, seed=seed, progress=progress)


def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = DEFAULT_SIZE) -> Path:
    """Write a synthetic ct_train/ + ct_test/ download at `out` (n labelled volumes, ids 1001..)."""
    return mmwhs.synthesize(out, modality=MODALITY, n=n, seed=seed, size=size)
