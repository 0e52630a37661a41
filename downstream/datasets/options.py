"""What `bench data prepare` may ask of an adapter beyond the raw folder: how strictly to read label
codes, a published split to reproduce, lists of images to keep out of the test split, and a named
intensity normalisation.

Every adapter's `prepare` takes `options=` and calls `supported(options, NAME, ...)` first, so an
option an adapter cannot honour is refused in one line instead of being ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medssl_bench.harness.errors import UserError


@dataclass(frozen=True)
class PrepareOptions:
    #: unknown label codes in a mask: refuse the file (True) or map them to background, counted and
    #: warned about in dataset.json (False, as the public loaders do)
    strict: bool = False
    #: a published split file to reproduce exactly (e.g. LVM-Med's files_split/Kvasir.json), read
    #: from the user's own checkout
    split_file: Path | None = None
    #: lists of image ids or paths (LVM-Med's lvm-med-training-data/*/file_list.txt format) that must
    #: not be in the test split: a pretraining set's images
    exclude_from: tuple[Path, ...] = ()
    #: intensity normalisation, by name (NORMALISATIONS): "window" = the adapter's default (MMWHS: a
    #: 0.5-99.5 percentile window per volume), "lvmmed" = LVM-Med's MMWHS preprocessing (clip to the
    #: 0.5-99.5 percentiles, z-score, /10, clip to [0, 1], per volume); recorded in dataset.json
    normalisation: str = "window"


NORMALISATIONS = ("window", "lvmmed")


def supported(options: PrepareOptions | None, dataset: str, *, split_file: bool = False,
              exclude_from: bool = False, normalisation: tuple[str, ...] = ("window",)) -> PrepareOptions:
    """`options` (defaults when None), after refusing what `dataset`'s adapter does not support."""
    options = options or PrepareOptions()
    if options.split_file is not None and not split_file:
        raise UserError(f"--split-file is not supported for {dataset}: its split is fixed by the adapter "
                        "(docs/datasets.md)")
    if options.exclude_from and not exclude_from:
        raise UserError(f"--exclude-from is not supported for {dataset} yet")
    if options.normalisation not in NORMALISATIONS:
        raise UserError(f"unknown --normalisation {options.normalisation!r}; choose one of: {', '.join(NORMALISATIONS)}")
    if options.normalisation not in normalisation:
        raise UserError(f"--normalisation {options.normalisation} is not supported for {dataset} (it supports: "
                        f"{', '.join(normalisation)}; docs/datasets.md)")
    return options
