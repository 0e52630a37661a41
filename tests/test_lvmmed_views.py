"""LVM-Med's views: the crop + flip step returns the true centre of every feature cell (blocks/crop_grid.py),
checked against hand-computed boxes and against the pixels themselves."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from medssl_bench.methods.blocks.crop_grid import CropFlipWithGrid, cell_centres
from medssl_bench.methods.lvmmed import GeometricViews


def test_cell_centres_of_a_known_box_by_hand():
    # box: top 10, left 20, 64 high, 96 wide, 2 x 2 cells of 48 x 32 px
    grid = cell_centres(10, 20, 64, 96, 2, hflip=False)
    assert grid.tolist() == [[[44.0, 26.0], [92.0, 26.0]], [[44.0, 58.0], [92.0, 58.0]]]
    # flipped: output column 0 shows the right half of the box
    flipped = cell_centres(10, 20, 64, 96, 2, hflip=True)
    assert flipped.tolist() == [[[92.0, 26.0], [44.0, 26.0]], [[92.0, 58.0], [44.0, 58.0]]]


def test_a_full_224_px_crop_has_centres_every_32_px():
    grid = cell_centres(0, 0, 224, 224, 7, hflip=False)
    expected = [16.0 + 32 * k for k in range(7)]  # 16, 48, ..., 208 (lightly 1.6.0: 16, 53.3, ..., 240)
    assert grid[0, :, 0].tolist() == expected and grid[:, 0, 1].tolist() == expected


def coordinate_image(width: int = 256, height: int = 192) -> Image.Image:
    """Red = x, green = y of each pixel: a crop's pixels say where in the source they came from."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8))


@pytest.mark.parametrize("flip", [False, True])
def test_the_pixel_at_each_cell_centre_comes_from_the_reported_source_point(monkeypatch, flip):
    box = (40, 30, 120, 160)  # top, left, height, width
    monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(lambda img, scale, ratio: box))
    monkeypatch.setattr(torch, "rand", lambda *shape: torch.zeros(shape) if flip else torch.ones(shape))
    crop, grid = CropFlipWithGrid(64, (0.2, 1.0), grid=4)(coordinate_image())
    assert crop.size == (64, 64) and grid.shape == (4, 4, 2)
    torch.testing.assert_close(grid, cell_centres(*box, 4, flip))
    pixels = np.asarray(crop).astype(float)
    for r in range(4):
        for c in range(4):
            # output cell (r, c) spans 16 px; its centre lies between pixels 16c+7 and 16c+8
            source_x = pixels[16 * r + 7:16 * r + 9, 16 * c + 7:16 * c + 9, 0].mean() + 0.5  # pixel centres
            source_y = pixels[16 * r + 7:16 * r + 9, 16 * c + 7:16 * c + 9, 1].mean() + 0.5
            assert abs(source_x - grid[r, c, 0].item()) < 1.5 and abs(source_y - grid[r, c, 1].item()) < 1.5


def test_every_cell_centre_lies_inside_its_crop(monkeypatch):
    boxes = []
    real = T.RandomResizedCrop.get_params
    monkeypatch.setattr(T.RandomResizedCrop, "get_params",
                        staticmethod(lambda *a: boxes.append(real(*a)) or boxes[-1]))
    crop = CropFlipWithGrid(224, (0.2, 1.0), grid=7)
    image = coordinate_image(300, 250)
    torch.manual_seed(0)
    for _ in range(50):
        _, grid = crop(image)
        top, left, height, width = boxes[-1]
        # half a cell from each edge of the box, at most
        assert grid[..., 0].min() == pytest.approx(left + width / 14) and grid[..., 0].max() == pytest.approx(left + width * 13 / 14)
        assert grid[..., 1].min() == pytest.approx(top + height / 14) and grid[..., 1].max() == pytest.approx(top + height * 13 / 14)


def test_geometric_views_are_two_unnormalised_images_and_two_grids_inside_the_image():
    torch.manual_seed(0)
    out = GeometricViews(96, (0.2, 1.0))(coordinate_image(120, 100))
    assert len(out) == 4
    for view in out[:2]:
        assert view.shape == (3, 96, 96) and 0.0 <= view.min() and view.max() <= 1.0
    for grid in out[2:]:
        assert grid.shape == (3, 3, 2) and 0.0 < grid.min() and grid.max() < 1.0
