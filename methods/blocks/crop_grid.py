"""A random resized crop + horizontal flip that also returns where each feature-map cell came from.

VICRegL's location-based matching (and LVM-Med's local affinity, which borrows it) compares feature
cells of two views through their centres in source-image pixels. For a crop box (top, left, height,
width) cut into a G x G grid, cell (r, c) covers [left + c·w/G, left + (c+1)·w/G) x [top + r·h/G, ...),
so its centre is (left + (c+½)·w/G, top + (r+½)·h/G), as VICRegL's own `_location_to_NxN_grid`
spaces them (github.com/facebookresearch/VICRegL, transforms.py). lightly 1.6.0's
`RandomResizedCropAndFlip` spaces them by w/(G-1) instead (linspace over the box plus half a cell),
which puts the last centre half a cell outside the crop; this block replaces it.
"""
from __future__ import annotations

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F


def cell_centres(top: float, left: float, height: float, width: float, grid: int, hflip: bool) -> torch.Tensor:
    """(grid, grid, 2): entry [r, c] = (x, y) of the source-image point at the centre of output cell (r, c).
    A horizontal flip shows source column grid-1-c at output column c, so the x centres run backwards."""
    offsets = torch.arange(grid, dtype=torch.float64) + 0.5
    x = left + offsets * (width / grid)
    y = top + offsets * (height / grid)
    if hflip:
        x = x.flip(0)
    grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).float()


def normalised(grid: torch.Tensor, image) -> torch.Tensor:
    """Cell centres in source-image pixels scaled to [0, 1], so that cells of different images compare."""
    return grid / torch.tensor(image.size, dtype=torch.float32)  # (width, height) = (x, y) scale


class CropFlipWithGrid:
    """PIL image -> (crop resized to `size`, its (grid, grid, 2) cell centres in source pixels, (x, y)).

    The box comes from torchvision's RandomResizedCrop.get_params (scale, aspect ratio 3/4-4/3), as in
    lightly's and VICRegL's transforms, so the crop distribution is theirs; then a flip with prob `hflip_prob`."""

    def __init__(self, size: int, scale: tuple[float, float], grid: int, hflip_prob: float = 0.5):
        self.size, self.scale, self.grid, self.hflip_prob = size, tuple(scale), grid, hflip_prob
        self.ratio = (3 / 4, 4 / 3)

    def __call__(self, image):
        top, left, height, width = T.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        crop = F.resized_crop(image, top, left, height, width, [self.size, self.size],
                              interpolation=T.InterpolationMode.BILINEAR, antialias=True)
        flip = bool(torch.rand(1) < self.hflip_prob)
        if flip:
            crop = F.hflip(crop)
        return crop, cell_centres(top, left, height, width, self.grid, flip)

    def device_parts(self) -> tuple:
        """(crop op, [flip op]) of the device path (harness.device_ops) drawing what __call__ draws, in its order:
        the box by RandomResizedCrop.get_params, then the flip's torch.rand(1); bilinear, as __call__ resizes."""
        from medssl_bench.harness.device_ops import Crop, Flip

        rrc = T.RandomResizedCrop(self.size, self.scale, self.ratio, interpolation=T.InterpolationMode.BILINEAR)
        return Crop(rrc, by_get_params=True), [Flip(self.hflip_prob, horizontal=True)]

    def grid_of(self, drawn: list[float]) -> torch.Tensor:
        """The cell centres __call__ returns, from the device path's drawn slots (top, left, height, width, flip)."""
        top, left, height, width, flip = (int(v) for v in drawn[:5])
        return cell_centres(top, left, height, width, self.grid, bool(flip))


def normalised_grid_of(crop_flip: CropFlipWithGrid, drawn: list[float], image) -> torch.Tensor:
    """The device path's grid (harness.device_views.View's `grid`): the drawn crop's cell centres, normalised."""
    return normalised(crop_flip.grid_of(drawn), image)
