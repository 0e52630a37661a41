"""What `bench data prepare` may ask of an adapter beyond the raw folder: how strictly to read label
codes, a published split to reproduce, and lists of images to keep out of the test split.

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


def supported(options: PrepareOptions | None, dataset: str, *, split_file: bool = False,
              exclude_from: bool = False) -> PrepareOptions:
    """`options` (defaults when None), after refusing what `dataset`'s adapter does not support."""
    options = options or PrepareOptions()
    if options.split_file is not None and not split_file:
        raise UserError(f"--split-file is not supported for {dataset}: its split is fixed by the adapter "
                        "(docs/datasets.md)")
    if options.exclude_from and not exclude_from:
        raise UserError(f"--exclude-from is not supported for {dataset} yet")
    return options
