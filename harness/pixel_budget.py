"""The pixel budget: how large an image may decode to before it is refused, from its header alone.

A 2D image, DICOM frame or NIfTI slice over MAX_IMAGE_PIXELS (89,478,485, Pillow's MAX_IMAGE_PIXELS, about
9459 x 9459, 256 MiB as RGB) and a NIfTI volume over MAX_VOLUME_VOXELS (2^29, 2 GiB as float32, a 512 x 512
x 2048 CT) are refused before decoding: a 20 KB 1-bit PNG of 13000 x 13000 decodes to 169 MB and cost 2 GB
in pretraining. Pillow itself only warns up to twice its limit, and bench silences decoder warnings.
harness.imageio checks every read (corpus build, training loader, `bench data prepare`); mask readers
that open files with Pillow directly call `check_pixel_budget` too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medssl_bench.harness.errors import CorruptImageError

MAX_IMAGE_PIXELS = 89_478_485
MAX_VOLUME_VOXELS = 2**29


def check_pixel_budget(shape: tuple[int, ...], path: str | Path, what: str = "image") -> None:
    """Refuse, before decoding, an image of `shape` (width/height, in any order) over MAX_IMAGE_PIXELS."""
    pixels = int(np.prod([int(n) for n in shape], dtype=np.int64))
    if pixels > MAX_IMAGE_PIXELS:
        size = " x ".join(str(int(n)) for n in shape)
        raise CorruptImageError(f"{what} of {size} = {pixels:,} pixels is over the pixel budget of "
                                f"{MAX_IMAGE_PIXELS:,} (decoding it would take {pixels * 3 / 2**30:.1f} GiB as RGB); "
                                "downsample it or leave it out", path)


def check_volume_budget(shape: tuple[int, ...], path: str | Path) -> None:
    """From the header: every slice within MAX_IMAGE_PIXELS, the first volume within MAX_VOLUME_VOXELS."""
    spatial = [int(n) for n in shape[:3]]
    check_pixel_budget(sorted(spatial, reverse=True)[:2], path, "NIfTI slice")
    voxels = int(np.prod(spatial, dtype=np.int64))
    if voxels > MAX_VOLUME_VOXELS:
        raise CorruptImageError(f"NIfTI volume of {' x '.join(map(str, spatial))} = {voxels:,} voxels is over the "
                                f"budget of {MAX_VOLUME_VOXELS:,}; crop or downsample it", path)
