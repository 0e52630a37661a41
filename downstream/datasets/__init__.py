"""Downstream dataset adapters: raw download (or synthetic stand-in) -> canonical prepared form.

Each adapter (a module; MMWHS: one object per modality) follows the `Adapter` protocol below: NAME,
LAYOUT, CLASSES, DEFAULT_N, `prepare(src, out_root, *, seed, progress, options)` and `synthesize(out, *, n,
seed, size)`. `ADAPTERS` maps the dataset name (the registry's `Task.dataset`) to its adapter;
`LABELLED_ADAPTERS` the labelled sets that only pretraining reads (`bench pretrain --labels-from`, no task
evaluates on them). Every adapter of both is checked against the protocol by tests/test_dataset_contract.py. A prepared
dataset is read by its task family's loader (`downstream.families.FAMILIES[family].load(folder)`).
Finding folders in a raw download (case, wrappers, zip residue) is done once, in `_paths`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from medssl_bench.downstream.datasets.options import PrepareOptions
from medssl_bench.downstream.datasets import (bccd, brain_tumor, brats, busi, cxr_findings, drive, fgadr, isic2018, jsrt,
                                kvasir_det, kvasir_seg, mmwhs, prostate, vindr_cxr)


@runtime_checkable
class Adapter(Protocol):
    """The contract of a dataset adapter.

    `prepare` validates the raw download under `src` (the dataset folder, its parent or a wrapper)
    and writes `out_root/NAME/` in the canonical form of the task family, returning that folder.
    Every problem with the input (a missing, truncated or corrupt file, a label outside the codebook,
    a mask that does not fit its image, ...) is a one-line UserError naming the file; the folder is
    built beside its target and swapped in only when complete, so a failure writes nothing and keeps
    an earlier copy. The split is fixed in the output: same input and seed -> same content hash.
    `progress(done, total)` is called as samples are written. `options` (`PrepareOptions`): strict label
    codes, a published split file, lists to keep out of test; one the adapter cannot honour is refused.

    `synthesize` writes synthetic data in the exact raw layout users download (`LAYOUT`), marked
    synthetic, and returns `out`; same arguments -> same bytes. Adapters may take extra keyword
    arguments (a release variant, the sites to write).
    """

    @property
    def NAME(self) -> str:  # noqa: N802  (the dataset name: Task.dataset and the prepared folder's name)
        ...

    @property
    def LAYOUT(self) -> str:  # noqa: N802  (the raw layout, one line: quoted by errors and `bench data synth`)
        ...

    @property
    def CLASSES(self) -> list[str]:  # noqa: N802  (the prepared classes; segmentation: background first)
        ...

    @property
    def DEFAULT_N(self) -> int:  # noqa: N802  (images, for 3D data volumes, `synthesize` writes by default)
        ...

    def prepare(self, src: Path, out_root: Path, *, seed: int = 42,
                progress: Callable[[int, int], None] | None = None,
                options: PrepareOptions | None = None) -> Path: ...

    def synthesize(self, out: Path, *, n: int, seed: int = 0, size: int) -> Path: ...


ADAPTERS: dict[str, Adapter] = {adapter.NAME: adapter for adapter in (
    fgadr, brain_tumor, isic2018, jsrt, kvasir_seg, drive, busi, brats, mmwhs.CT, mmwhs.MRI, prostate, vindr_cxr,
    kvasir_det, bccd)}
#: pretraining-only labelled sets (classification family, multi-label canonical form)
LABELLED_ADAPTERS: dict[str, Adapter] = {adapter.NAME: adapter for adapter in (cxr_findings,)}


__all__ = ["ADAPTERS", "Adapter", "LABELLED_ADAPTERS"]
