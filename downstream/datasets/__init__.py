"""Downstream dataset adapters: raw download (or synthetic stand-in) -> canonical prepared form.

Each adapter (a module; MMWHS: one object per modality) exposes NAME, LAYOUT, `prepare(src, out_root, *, seed, progress)` and
`synthesize(out, *, n, seed, size)` (segmentation and detection adapters also DEFAULT_N); `ADAPTERS` maps the
dataset name (the registry's `Task.dataset`) to its module. A prepared dataset is read by its task family's loader
(`downstream.families.FAMILIES[family].load(folder)`).
"""
from __future__ import annotations

from types import ModuleType

from medssl_bench.downstream.datasets import (bccd, brain_tumor, brats, busi, drive, fgadr, isic2018, jsrt, kvasir_det, kvasir_seg,
                                mmwhs, prostate, vindr_cxr)

ADAPTERS: dict[str, ModuleType | mmwhs.ModalityAdapter] = {adapter.NAME: adapter for adapter in (
    fgadr, brain_tumor, isic2018, jsrt, kvasir_seg, drive, busi, brats, mmwhs.CT, mmwhs.MRI, prostate, vindr_cxr,
    kvasir_det, bccd)}


__all__ = ["ADAPTERS"]
