"""Views made on the device (`augment: device`): loader workers decode and draw parameters, the device makes pixels.

A method's view transform (lightly's MultiViewTransform of torchvision-v2 Composes) is read into a plan, one list of
ops per view. In a worker, `DeviceViewsTransform` runs inside ViewsDataset's per-sample seeding (harness.data) and
draws each op's parameters with the calls the CPU op makes, in its order (torchvision's `make_params`, `torch.rand(1)
< p` for a random apply, numpy for lightly's blur, solarisation and rotation): the same seed gives the CPU path's
crop boxes, flips, jitter factors and orders and blur sigmas, sample for sample, so resume stays exact. The worker
ships the decoded uint8 image and the parameters; `DeviceViewsPreprocessor` makes all views of a batch at once on the
model's device with kornia and normalises them as ViewsPreprocessor does. A view op without a device counterpart
is refused in one line before a run starts (`check_device_views`); a view class of a method's own offers its plan
(`device_plan()`: LVM-Med's, PEAC's, Models Genesis', Ark's) and an op of its own its device op (`device_op()`).
torchvision's v1 ops read here (Compose, RandomResizedCrop, RandomApply, RandomChoice, ColorJitter, RandomAffine)
draw through the calls their v1 forwards make (get_params, `p < rand`, random.choices).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from mmengine.model import BaseDataPreprocessor
from PIL import Image

from medssl_bench.harness.data import IMAGE_MEAN, IMAGE_STD
from medssl_bench.harness.device_ops import (Affine, Apply, Blur, Choice, Crop, Flip, Grayscale, Jitter, Op, Rotate,
                                             Solarize, Unsupported)
from medssl_bench.harness.errors import UserError

# A worker shrinks an image (PIL's whole-factor box reduce, cheap) only when its long side exceeds this many times
# the largest crop: 3 x 224 = 672 keeps 512 px CT slices as they are while a 3000 px radiograph travels at <= 672.
MAX_SIDE_FACTOR = 3


def _leaf(op, size: tuple[int, int]) -> Op | None:
    """The device op for one CPU op of a view of `size` (height, width); None for ToTensor (the device path is
    float throughout)."""
    import torchvision.transforms as v1
    from lightly.transforms.gaussian_blur import GaussianBlur
    from lightly.transforms.rotation import RandomRotate
    from lightly.transforms.solarize import RandomSolarization
    from torchvision.transforms import v2

    name = type(op).__name__
    if name == "ToTensor":  # lightly's own or torchvision's: pixels to [0, 1], nothing drawn
        return None
    if callable(getattr(op, "device_op", None)):  # an op of a method's own (methods/...) names its device op
        return op.device_op()

    def inner(ops) -> list[Op]:
        return [leaf for leaf in (_leaf(o, size) for o in _flatten(list(ops))) if leaf is not None]

    if isinstance(op, (v2.RandomHorizontalFlip, v2.RandomVerticalFlip)):
        return Flip(op.p, isinstance(op, v2.RandomHorizontalFlip))
    if isinstance(op, (v2.RandomApply, v1.RandomApply)):
        return Apply(op.p, inner(op.transforms), v1=isinstance(op, v1.RandomApply))
    if isinstance(op, v1.RandomChoice):
        return Choice(op, [_leaf(o, size) for o in op.transforms])
    if isinstance(op, v1.RandomAffine):
        return Affine(op, size)
    if isinstance(op, (v2.ColorJitter, v1.ColorJitter)):
        return Jitter(op)
    if isinstance(op, v2.RandomGrayscale):
        return Grayscale(op.p)
    if isinstance(op, (RandomRotate, v2.RandomRotation)):
        return Rotate(op)
    if isinstance(op, GaussianBlur):
        return Blur(op)
    if isinstance(op, RandomSolarization):
        return Solarize(op)
    raise Unsupported(f"{type(op).__module__.split('.')[0]}'s {name}")


def _flatten(ops: list) -> list:
    """A view's ops in call order: Composes opened, lightly's view classes (a `.transform` Compose) opened."""
    import torchvision.transforms as v1
    from torchvision.transforms import v2

    out = []
    for op in ops:
        if type(op).__name__ == "ToTensor":  # lightly's wraps a Compose of its own: kept whole
            out.append(op)
        elif isinstance(op, (v2.Compose, v1.Compose)):
            out += _flatten(list(op.transforms))
        elif type(op).__name__ == "RandomRotateDegrees":  # lightly: RandomApply([RandomRotation])
            out += _flatten([op.transform])
        elif isinstance(getattr(op, "transform", None), v2.Compose):
            out += _flatten([op.transform])
        else:
            out.append(op)
    return out


class View:
    """One view: a crop (its first op), then the other ops in order, each with its parameter slots.

    A view whose crop and flips are not ops of its Compose (VICRegL's crop-and-flip with location, LVM-Med's own crop
    with its cell grid) passes them as `crop` and `head` (drawn before the Compose's ops, as its CPU call draws them)
    and a `grid`: a picklable callable (drawn parameters, decoded image) -> the tensor the CPU path returns after the
    views, computed in the worker so that it equals the CPU path's exactly."""

    def __init__(self, view_transform, crop: Crop | None = None, head: list[Op] = (), grid=None):
        import torchvision.transforms as v1
        from torchvision.transforms import v2

        ops, self.grid = ([] if view_transform is None else _flatten([view_transform])), grid  # None: no more ops
        if crop is not None:
            self.crop, head = crop, list(head)
        elif ops and isinstance(ops[0], (v2.RandomResizedCrop, v1.RandomResizedCrop)):
            # v1's forward draws its box by its static get_params
            self.crop, ops, head = Crop(ops[0], by_get_params=isinstance(ops[0], v1.RandomResizedCrop)), ops[1:], []
        else:
            first = type(ops[0]).__name__ if ops else "nothing"
            raise Unsupported(f"a view that starts with {first}, not a RandomResizedCrop")
        self.ops = head + [leaf for leaf in (_leaf(op, self.crop.size) for op in ops) if leaf is not None]
        self.width = self.crop.width + sum(op.width for op in self.ops)

    def draw(self, image) -> list[float]:
        self.drawn = self.crop.draw(image) + [value for op in self.ops for value in op.draw(image)]
        return self.drawn  # kept for a SameDraw view after this one (a worker makes one sample at a time)

    def make(self, images: torch.Tensor, p: torch.Tensor, shrink: torch.Tensor, keep: int | None = None):
        """The (B, 3, *size) views; with `keep`, also the pixels after the crop and the first `keep` ops (a SameDraw
        view of this one: ops never change their input in place, so that batch is final when the next op runs)."""
        x = self.crop.crop(images, p[:, :4], shrink)
        mask, at, kept = torch.ones(len(x), dtype=torch.bool, device=x.device), self.crop.width, x
        for n, op in enumerate(self.ops, 1):
            x = op.apply(x, p[:, at:at + op.width], mask)
            at += op.width
            kept = x if n == keep else kept
        return x if keep is None else (x, kept)


class SameDraw(View):
    """A view made from another view's draw: its crop and first `n_ops` ops with the slots that view drew for them,
    nothing drawn again (Ark's one geometric draw for both views). It must come after `source` in the plan."""

    def __init__(self, source: View, n_ops: int):
        self.source, self.crop, self.ops, self.grid = source, source.crop, source.ops[:n_ops], None
        self.n_ops = n_ops
        self.width = self.crop.width + sum(op.width for op in self.ops)

    def draw(self, image) -> list[float]:
        return self.source.drawn[:self.width]


class LightlyLocationGrid:
    """lightly's (grid, grid, 2) cell centres of a drawn crop in the image, flipped as the crop is (VICRegL's);
    a class, not a closure, so that a plan pickles into spawned loader workers."""

    def __init__(self, crop_and_flip):
        self.crop_and_flip = crop_and_flip

    def __call__(self, drawn: list[float], image) -> torch.Tensor:
        from lightly.transforms.random_crop_and_flip_with_grid import Location

        top, left, height, width, hflip, vflip = drawn[:6]  # the crop's slots, then its two flips'
        return self.crop_and_flip.location_to_NxN_grid(Location(
            top=int(top), left=int(left), height=int(height), width=int(width), image_height=image.height,
            image_width=image.width, horizontal_flip=bool(hflip), vertical_flip=bool(vflip)))


def view_plan(transform) -> list[View]:
    """The device plan of a method's view transform; Unsupported names the first op without a device path.

    A transform of the method's own (methods/...) offers its plan through a `device_plan()` method built from its own
    objects, so that this ground floor imports no plug-in."""
    from lightly.transforms.image_grid_transform import ImageGridTransform
    from lightly.transforms.multi_view_transform import MultiViewTransform
    from lightly.transforms.random_crop_and_flip_with_grid import RandomResizedCropAndFlip

    if callable(getattr(transform, "device_plan", None)):
        return transform.device_plan()
    if isinstance(transform, ImageGridTransform):  # (crop-and-flip with grid, view transform) pairs: VICRegL
        if not all(isinstance(pair[0], RandomResizedCropAndFlip) for pair in transform.transforms):
            raise Unsupported(f"{type(transform).__name__} without lightly's RandomResizedCropAndFlip")
        return [View(view, Crop(cf.resized_crop, by_get_params=True),
                     [Flip(cf.horizontal_flip.p, True), Flip(cf.vertical_flip.p, False)], LightlyLocationGrid(cf))
                for cf, view in transform.transforms]
    if not isinstance(transform, MultiViewTransform):
        raise Unsupported(type(transform).__name__)
    return [View(view) for view in transform.transforms]


def check_device_views(method_cls, cfg: dict) -> list[View] | None:
    """With `augment: device`, the method's plan, or one line saying why it has none; None with `augment: cpu`."""
    from medssl_bench.harness.config import build_transform

    if cfg.get("augment", "cpu") != "device":
        return None
    transform, n_image_views = build_transform(method_cls, cfg)
    try:
        plan = view_plan(transform)
        grids = sum(view.grid is not None for view in plan)
        # a label-using method's loader puts the labels after the images (harness.app.labelled), not its transform
        labels_only = method_cls.uses_labels and grids == 0 and n_image_views == len(plan)
        if n_image_views not in (None, grids) and not labels_only or grids not in (0, len(plan)):
            raise Unsupported(f"{type(transform).__name__}, which returns more than images and grids")
        return plan
    except Unsupported as err:
        raise UserError(f"method {method_cls.name}'s views ({err}) have no device path yet; use --augment cpu") \
            from None


@lru_cache(maxsize=64)
def size_stand_in(width: int, height: int) -> Image.Image:
    """A 1-bit PIL image of this size (32 KiB at 512 px): what the draws read of an image is its size."""
    return Image.new("1", (width, height))


class DeviceViewsTransform:
    """The worker's half: (decoded image) -> [uint8 (H, W, C) pixels, (n_views, width) float64 parameters, the
    factor the image was reduced by, then any location grids]. Called inside ViewsDataset's seeded context, so its
    draws are the CPU path's. The image is a PIL image, or a uint8 (H, W) / (H, W, 3) array as a packed corpus
    holds it (PackedImages.pixels): then the pixels travel as they are, grey as one channel (the collate repeats it,
    as PIL's convert("RGB") would), and the draws see a stand-in of its size."""

    def __init__(self, plan: list[View]):
        self.plan, self.width = plan, max(view.width for view in plan)
        self.max_side = MAX_SIDE_FACTOR * max(max(view.crop.size) for view in plan)

    def __call__(self, image) -> list[torch.Tensor]:
        array = None
        if isinstance(image, np.ndarray):  # grey or RGB travels as stored; another array (RGBA...) as PIL converts it
            if image.ndim == 2 or image.shape[2] == 3:
                array, image = image, size_stand_in(image.shape[1], image.shape[0])
            else:
                image = Image.fromarray(image)
        params, grids = np.zeros((len(self.plan), self.width)), []
        for k, view in enumerate(self.plan):  # views in MultiViewTransform's order: the CPU path's RNG sequence
            drawn = view.draw(image)
            params[k, :len(drawn)] = drawn
            if view.grid is not None:
                grids.append(view.grid(drawn, image))
        shrink = max(1, math.ceil(max(image.size) / self.max_side))
        if array is not None and shrink > 1:
            image, array = Image.fromarray(array), None
        if array is not None:
            pixels = torch.from_numpy(array if array.ndim == 3 else array[:, :, None])
        else:
            if shrink > 1:  # boxes stay in the decoded image's pixels; the device divides them by `shrink`
                image = image.reduce(shrink)
            pixels = torch.from_numpy(np.array(image if image.mode == "RGB" else image.convert("RGB")))  # one copy
        return [pixels, torch.from_numpy(params), torch.tensor(float(shrink), dtype=torch.float64), *grids]


def collate_device_views(batch: list[dict]) -> dict[str, Any]:
    """Images padded (bottom, right) to the batch's largest by repeating their last row and column (PIL's resize
    clamps at the edge; zeros would darken crops that touch it), a grey one repeated to RGB, parameters and shrink
    factors stacked; the first decode error passed through, as harness.data.collate_views does."""
    for item in batch:
        if "error" in item:
            return {"error": item["error"]}
    height = max(item["inputs"][0].shape[0] for item in batch)
    width = max(item["inputs"][0].shape[1] for item in batch)
    pixels = torch.zeros((len(batch), height, width, 3), dtype=torch.uint8)
    for k, item in enumerate(batch):
        image = item["inputs"][0]
        h, w = image.shape[:2]
        pixels[k, :h, :w] = image
        pixels[k, :h, w:] = image[:, -1:]
        pixels[k, h:] = pixels[k, h - 1]
    stacked = [torch.stack([item["inputs"][k] for item in batch]) for k in range(1, len(batch[0]["inputs"]))]
    return {"inputs": [pixels, *stacked]}


class DeviceViewsPreprocessor(BaseDataPreprocessor):
    """Moves decoded images + parameters to the device, makes the views there, normalised as ViewsPreprocessor's."""

    def __init__(self, plan: list[View]):
        super().__init__()
        self.plan = plan
        # {source's index: (its SameDraw view's index, ops they share)}: that view's pixels are the source's after those
        # ops, from the same slots, so they are kept as the source is made rather than made twice (Ark's teacher)
        sources = {j: next(k for k, v in enumerate(plan) if v is view.source)
                   for j, view in enumerate(plan) if isinstance(view, SameDraw)}
        self.shared = {k: (j, plan[j].n_ops) for j, k in sources.items() if k < j}
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def views(self, images: torch.Tensor, params: torch.Tensor, shrink: torch.Tensor) -> list[torch.Tensor]:
        views, kept = [], {}
        for k, view in enumerate(self.plan):
            if k in kept:
                views.append(kept.pop(k))
            elif k in self.shared:
                same, n_ops = self.shared[k]
                x, kept[same] = view.make(images, params[:, k], shrink, keep=n_ops)
                views.append(x)
            else:
                views.append(view.make(images, params[:, k], shrink))
        return views

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        if "inputs" in data:
            pixels, params, shrink, *grids = data["inputs"]  # grids or masks follow the views, as on the CPU path
            # views in float32 even under --amp (the engine calls this inside the autocast context), as the CPU path's
            with torch.autocast(pixels.device.type, enabled=False):
                images = pixels.permute(0, 3, 1, 2).float().div_(255)
                params, shrink = params.float(), shrink.float()
                data["inputs"] = [(view - self.mean) / self.std for view in self.views(images, params, shrink)] + grids
        return data
