"""Downstream dataset adapters: raw download (or synthetic stand-in) -> canonical prepared form.

Each adapter module exposes NAME, CLASSES, LAYOUT, `prepare(src, out_root, *, seed, progress)`
and `synthesize(out, *, n, seed, size)`; `ADAPTERS` maps the dataset name to its module.
"""
from __future__ import annotations

from types import ModuleType

from downstream.datasets import brain_tumor, fgadr

ADAPTERS: dict[str, ModuleType] = {module.NAME: module for module in (fgadr, brain_tumor)}

__all__ = ["ADAPTERS"]
