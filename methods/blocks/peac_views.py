"""PEAC's grid-aligned views, cell geometry, normalisations and expander MLP (docs/methods.md, "PEAC";
github.com/jlianglab/PEAC).

An image becomes a square canvas of `cell`-px cells; after a random pixel offset (0..cell-1) two views of
n x n cells are cut at independent random *cell* offsets (0..max_cell_offset), so their overlap is an exact
set of cells. With cell = the ResNet stride (32), feature-map location (i, j) sees cell (i, j) of its view
(approximately: CNN receptive fields reach beyond the cell, and padding differs at view borders).
"""
from __future__ import annotations

import torch
from lightly.models.modules.heads import ProjectionHead
from torch import nn
from torchvision.transforms import v2 as T

from medssl_bench.harness.data import IMAGE_MEAN, IMAGE_STD
from medssl_bench.harness.device_ops import Crop
from medssl_bench.harness.errors import UserError

# the network input's mean/std per `normalisation`: cxr = the official ChestX-ray14 values (datasets.py)
NORMALISATIONS = {"imagenet": (tuple(IMAGE_MEAN), tuple(IMAGE_STD)), "cxr": ((0.5056,) * 3, (0.252,) * 3)}


class Normalisation(nn.Module):
    """Views arrive normalised with ImageNet's mean/std (harness.data); `normalisation` names the mean/std the
    network sees instead. forward: shipped -> network (exact, an affine map); to_unit/from_unit: network <-> [0, 1]."""

    def __init__(self, name: str = "imagenet"):
        super().__init__()
        pairs = dict(mean=NORMALISATIONS[name][0], std=NORMALISATIONS[name][1], shipped_mean=IMAGE_MEAN,
                     shipped_std=IMAGE_STD)
        for key, values in pairs.items():
            self.register_buffer(key, torch.tensor(values).view(1, 3, 1, 1), persistent=False)
        self.identity = name == "imagenet"

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        return view if self.identity else self.from_unit(view * self.shipped_std + self.shipped_mean)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mlp_expander(in_dim: int, dim: int) -> ProjectionHead:
    """The official PEAC expander MLP (PEC_Model.MLP): Linear-LayerNorm-ReLU twice, then a Linear without bias;
    acts on the last axis, so it takes pooled vectors (global) or tokens (local) alike."""
    return ProjectionHead([(in_dim, dim, nn.LayerNorm(dim), nn.ReLU(), True),
                           (dim, dim, nn.LayerNorm(dim), nn.ReLU(), True),
                           (dim, dim, None, None, False)])


def overlap_masks(offset1: tuple[int, int], offset2: tuple[int, int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major (n*n,) boolean masks of the cells of view 1 / view 2 that show the same canvas cell.

    Both masks list the shared cells in canvas row-major order, so the k-th True of one matches the k-th of
    the other."""
    (r1, c1), (r2, c2) = offset1, offset2
    rows, cols = (max(r1, r2), min(r1, r2) + n), (max(c1, c2), min(c1, c2) + n)  # shared canvas cells
    masks = []
    for row, col in (offset1, offset2):
        canvas_rows, canvas_cols = torch.arange(n) + row, torch.arange(n) + col
        in_rows = (canvas_rows >= rows[0]) & (canvas_rows < rows[1])
        in_cols = (canvas_cols >= cols[0]) & (canvas_cols < cols[1])
        masks.append((in_rows[:, None] & in_cols[None, :]).flatten())
    return masks[0], masks[1]


def grid_cells(image_size: int, cell: int, max_cell_offset: int) -> int:
    """Cells per view side; a UserError for a geometry PEAC cannot train with."""
    if image_size % cell or image_size // cell < 2:
        raise UserError(f"peac: image_size {image_size} must be a multiple of the {cell}-px cell and at least "
                        f"2 cells (one feature-map location per cell; the order and local losses need >= 2x2)")
    n = image_size // cell
    if not 0 <= max_cell_offset < n:
        raise UserError(f"peac: max_cell_offset {max_cell_offset} must be in 0..{n - 1} so the two "
                        f"{n}x{n}-cell views always share cells")
    return n


class GridViews:
    """PIL image -> [view1, view2, mask1, mask2]: views float (3, n*cell, n*cell) in [0, 1], not normalised.

    Randomness comes from torch's global RNG, which harness.data seeds per (seed, epoch, index). No flip,
    rotation or blur: as in PEAC, they would break the exact cell correspondence."""

    def __init__(self, image_size: int, cell: int = 32, max_cell_offset: int = 4):
        self.n, self.cell, self.max_offset = grid_cells(image_size, cell, max_cell_offset), cell, max_cell_offset
        canvas = (self.n + max_cell_offset + 1) * cell  # one spare cell for the pixel offset
        # Keep-ratio resize of the short side, then a centre square (PEAC: 608 = 19 cells for 14-cell views).
        self.canvas = T.Compose([T.ToImage(), T.Resize(canvas, antialias=True), T.CenterCrop(canvas),
                                 T.ToDtype(torch.float32, scale=True)])

    def __call__(self, image) -> list[torch.Tensor]:
        canvas = self.canvas(image)
        (dy, dx), offsets = self.draw()
        side = self.n * self.cell
        views = []
        for row, col in offsets:
            top, left = dy + row * self.cell, dx + col * self.cell
            views.append(canvas[:, top:top + side, left:left + side])
        return [*views, *overlap_masks(tuple(offsets[0]), tuple(offsets[1]), self.n)]

    def draw(self) -> tuple[list[int], list[list[int]]]:
        """(pixel offset (dy, dx), both views' cell offsets [(row, col), (row, col)]): all of a sample's draws."""
        return torch.randint(0, self.cell, (2,)).tolist(), torch.randint(0, self.max_offset + 1, (2, 2)).tolist()

    def device_plan(self) -> list:
        """`--augment device` (harness.device_views): each view a window of the canvas, i.e. a box of the image
        resized to the view's side; the masks computed in the worker from the same draws."""
        from medssl_bench.harness.device_views import View

        shared = _SharedDraw(self)
        return [View(None, _CanvasWindow(shared, k), grid=_OverlapMask(shared, k)) for k in range(2)]

    def canvas_geometry(self, height: int, width: int) -> tuple[float, float, int, int]:
        """(image px per canvas px down, across, the centre crop's top, left in the resized image), from the very
        torchvision helpers the canvas Compose's Resize and CenterCrop run (private: the tests catch a change)."""
        from torchvision.transforms.v2.functional._geometry import (_center_crop_compute_crop_anchor,
                                                                    _compute_resized_output_size)

        side = self.canvas.transforms[1].size[0]
        new_h, new_w = _compute_resized_output_size((height, width), [side])
        top, left = _center_crop_compute_crop_anchor(side, side, new_h, new_w)
        return height / new_h, width / new_w, top, left


class _SharedDraw:
    """One sample's geometry for both device views: GridViews.draw called when view 0 draws (its order on the CPU
    path: both views' offsets in one go), read back by view 1 and by both masks; a worker makes one sample at a
    time, so the state never mixes samples."""

    def __init__(self, views: GridViews):
        self.views, self.drawn = views, None

    def box(self, image, k: int) -> list[float]:
        """View k's window as a (top, left, height, width) box in the decoded image's pixels."""
        views, ((dy, dx), offsets) = self.views, self.drawn
        scale_y, scale_x, top, left = views.canvas_geometry(image.height, image.width)
        side = views.n * views.cell
        row, col = offsets[k]
        return [(top + dy + row * views.cell) * scale_y, (left + dx + col * views.cell) * scale_x,
                side * scale_y, side * scale_x]


class _CanvasWindow(Crop):
    """A device crop (harness.device_ops.Crop's bilinear crop and resize) of view k's window."""

    def __init__(self, shared: _SharedDraw, k: int):
        side = shared.views.n * shared.views.cell
        self.shared, self.k, self.size, self.mode = shared, k, (side, side), "bilinear"

    def draw(self, image) -> list[float]:
        if self.k == 0:
            self.shared.drawn = self.shared.views.draw()
        return self.shared.box(image, self.k)


class _OverlapMask:
    """View k's overlap mask from the sample's draws (a picklable grid function of harness.device_views.View)."""

    def __init__(self, shared: _SharedDraw, k: int):
        self.shared, self.k = shared, k

    def __call__(self, drawn, image) -> torch.Tensor:
        offsets = self.shared.drawn[1]
        return overlap_masks(tuple(offsets[0]), tuple(offsets[1]), self.shared.views.n)[self.k]


def to_cells(images: torch.Tensor, cell: int) -> torch.Tensor:
    """(B, C, h*cell, w*cell) -> (B, h*w, C, cell, cell), cells in row-major order."""
    b, c, height, width = images.shape
    h, w = height // cell, width // cell
    return images.view(b, c, h, cell, w, cell).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c, cell, cell)


def from_cells(cells: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of `to_cells`."""
    b, _, c, cell, _ = cells.shape
    return cells.view(b, h, w, c, cell, cell).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * cell, w * cell)


def permute_cells(images: torch.Tensor, perm: torch.Tensor, cell: int) -> torch.Tensor:
    """Location j of the output shows cell perm[b, j] of the input (perm: (B, h*w) long)."""
    h, w = images.shape[2] // cell, images.shape[3] // cell
    cells = to_cells(images, cell)
    index = perm[:, :, None, None, None].expand_as(cells)
    return from_cells(torch.gather(cells, 1, index), h, w)
