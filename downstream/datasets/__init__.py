"""Downstream dataset adapters: raw download (or synthetic stand-in) -> canonical prepared form.

Each adapter (a module; MMWHS: one object per modality) exposes NAME, LAYOUT, `prepare(src, out_root, *, seed, progress)` and
`synthesize(out, *, n, seed, size)` (segmentation and detection adapters also DEFAULT_N); `ADAPTERS` maps the
dataset name (the registry's `Task.dataset`) to its module.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from medssl_bench.downstream.datasets import (bccd, brain_tumor, brats, busi, drive, fgadr, isic2018, jsrt, kvasir_det, kvasir_seg,
                                mmwhs, prostate, vindr_cxr)

ADAPTERS: dict[str, ModuleType | mmwhs.ModalityAdapter] = {adapter.NAME: adapter for adapter in (
    fgadr, brain_tumor, isic2018, jsrt, kvasir_seg, drive, busi, brats, mmwhs.CT, mmwhs.MRI, prostate, vindr_cxr,
    kvasir_det, bccd)}


def load_prepared(folder: Path, family: str):
    """The prepared dataset in `folder`, read by the loader of the task family's canonical form."""
    if family == "classification":
        from medssl_bench.downstream.datasets.canonical import load_classification_dataset

        return load_classification_dataset(folder)
    if family == "detection":
        from medssl_bench.downstream.datasets.canonical_det import load_detection_dataset

        return load_detection_dataset(folder)
    from medssl_bench.downstream.datasets.canonical_seg import load_segmentation_dataset

    return load_segmentation_dataset(folder)


__all__ = ["ADAPTERS", "load_prepared"]
