"""Views made on the device (`augment: device`): loader workers decode and draw parameters, the device makes pixels.

A method's view transform (lightly's MultiViewTransform of torchvision-v2 Composes) is read into a plan, one list of
ops per view. In a worker, `DeviceViewsTransform` runs inside ViewsDataset's per-sample seeding (harness.data) and
draws each op's parameters with the calls the CPU op makes, in its order (torchvision's `make_params`, `torch.rand(1)
< p` for a random apply, numpy for lightly's blur, solarisation and rotation): the same seed gives the CPU path's
crop boxes, flips, jitter factors and orders and blur sigmas, sample for sample, so resume stays exact. The worker
ships the decoded uint8 image and the parameters; `DeviceViewsPreprocessor` makes all views of a batch at once on the
model's device with kornia and normalises them as ViewsPreprocessor does. A view op without a device counterpart
(LVM-Med's, PEAC's, VICRegL's own view classes...) is refused in one line before a run starts (`check_device_views`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from mmengine.model import BaseDataPreprocessor

from medssl_bench.harness.data import IMAGE_MEAN, IMAGE_STD
from medssl_bench.harness.errors import UserError

# A worker shrinks an image (PIL's whole-factor box reduce, cheap) only when its long side exceeds this many times
# the largest crop: 3 x 224 = 672 keeps 512 px CT slices as they are while a 3000 px radiograph travels at <= 672.
MAX_SIDE_FACTOR = 3


class Unsupported(Exception):
    """An op of a view transform that has no device counterpart (its text names it)."""


class Op:
    """One step of a view. `width` parameter slots; `draw` consumes the RNGs exactly as the CPU op's call does;
    `apply` changes the rows `mask` of a (B, 3, H, W) float batch in [0, 1] given their (B, width) parameters."""

    width = 0

    def draw(self, image) -> list[float]:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _where(mask: torch.Tensor, changed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), changed, x)


class Crop(Op):
    """torchvision's RandomResizedCrop: the box drawn by its own make_params; pixels by kornia crop_and_resize."""

    width = 4  # top, left, height, width, in the shipped image's pixels

    def __init__(self, rrc):
        mode = str(getattr(rrc.interpolation, "value", rrc.interpolation))  # an InterpolationMode or its name
        if mode not in ("bilinear", "bicubic"):
            raise Unsupported(f"RandomResizedCrop with {mode} interpolation")
        self.rrc, self.size, self.mode = rrc, tuple(rrc.size), mode

    def draw(self, image) -> list[float]:
        box = self.rrc.make_params([image])
        return [box["top"], box["left"], box["height"], box["width"]]

    def crop(self, images: torch.Tensor, p: torch.Tensor, shrink: torch.Tensor) -> torch.Tensor:
        """The (B, 3, *size) crops of `images` (B, 3, H, W) float; `shrink` (B,): the factor each image was reduced
        by in its worker (boxes are drawn on the decoded image)."""
        from kornia.filters import gaussian_blur2d
        from kornia.geometry.transform import crop_and_resize

        out_h, out_w = self.size
        top, left, h, w = (p[:, k] / shrink for k in range(4))
        # Pixel centres as torchvision/PIL resize them (half-pixel offsets); crop_and_resize's align_corners=True maps
        # the first/last output centre onto these box corners.
        x0, x1 = left + 0.5 * w / out_w - 0.5, left + (out_w - 0.5) * w / out_w - 0.5
        y0, y1 = top + 0.5 * h / out_h - 0.5, top + (out_h - 0.5) * h / out_h - 0.5
        boxes = torch.stack([torch.stack([x0, y0], 1), torch.stack([x1, y0], 1), torch.stack([x1, y1], 1),
                             torch.stack([x0, y1], 1)], 1).to(images.dtype)
        # PIL resizes with antialiasing; grid sampling does not. A crop shrunk by s gets a Gaussian pre-blur of
        # sigma (s - 1) / 2 per axis first, kornia's own antialias rule (kornia.geometry.transform.resize).
        sigma = torch.stack([(h / out_h - 1) / 2, (w / out_w - 1) / 2], 1).clamp(min=1e-3).to(images.dtype)
        if float(sigma.max()) > 0.1:
            k = 2 * math.ceil(3 * float(sigma.max())) + 1
            images = gaussian_blur2d(images, (k, k), sigma, border_type="replicate")
        out = crop_and_resize(images, boxes, (out_h, out_w), mode=self.mode, padding_mode="border",
                              align_corners=True)
        return out.clamp(0, 1)


class Flip(Op):
    """torchvision's RandomHorizontalFlip / RandomVerticalFlip."""

    width = 1

    def __init__(self, p: float, horizontal: bool):
        self.p, self.horizontal = p, horizontal

    def draw(self, image) -> list[float]:
        return [float(torch.rand(1) < self.p)]  # _RandomApplyTransform skips when rand >= p

    def apply(self, x, p, mask):
        from kornia.geometry.transform import hflip, vflip

        return _where(mask & (p[:, 0] > 0), (hflip if self.horizontal else vflip)(x), x)


class Rotate(Op):
    """lightly's RandomRotate (a fixed angle with probability `prob`) and torchvision's RandomRotation (angle drawn
    by its make_params; nearest, no expansion, zero fill: its defaults) inside a RandomApply."""

    width = 1  # the angle in degrees, counter-clockwise; 0: not rotated

    def __init__(self, op):
        self.op = op
        fill = op.fill.values() if isinstance(getattr(op, "fill", 0), dict) else [getattr(op, "fill", 0)]
        if not hasattr(op, "angle") and (op.expand or op.center is not None or any(fill)):
            raise Unsupported("RandomRotation with expand, a centre or a fill")

    def draw(self, image) -> list[float]:
        if hasattr(self.op, "angle"):  # lightly's RandomRotate draws from numpy
            return [float(self.op.angle) if np.random.random_sample() < self.op.prob else 0.0]
        return [self.op.make_params([image])["angle"]]

    def apply(self, x, p, mask):
        from kornia.geometry.transform import rotate

        rows, x = mask & (p[:, 0] != 0), x.clone()
        # kornia's angle is counter-clockwise as torchvision's; nearest, as torchvision's rotate default
        x[rows] = rotate(x[rows], p[rows, 0].to(x.dtype), mode="nearest", align_corners=False)
        return x


class Jitter(Op):
    """torchvision's ColorJitter: order and factors from its make_params, pixels by kornia's blend-based adjusts
    (torchvision's definitions: brightness scales, contrast and saturation blend with the grey mean / grey image)."""

    width = 8  # the order of the four adjustments, then brightness, contrast, saturation, hue (NaN: not set)

    def __init__(self, cj):
        self.cj = cj

    def draw(self, image) -> list[float]:
        params = self.cj.make_params([])
        factors = [params[f"{k}_factor"] for k in ("brightness", "contrast", "saturation", "hue")]
        return [float(i) for i in params["fn_idx"]] + [math.nan if f is None else float(f) for f in factors]

    def apply(self, x, p, mask):
        from kornia.enhance import (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction, adjust_hue,
                                    adjust_saturation_with_gray_subtraction)

        fns = (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction,
               adjust_saturation_with_gray_subtraction, lambda img, f: adjust_hue(img, f * 2 * math.pi))
        x = x.clone()
        for position in range(4):  # each sample its own order: per step, each adjustment on the rows it comes at
            for fn_id, fn in enumerate(fns):
                factor = p[:, 4 + fn_id]
                rows = mask & (p[:, position] == fn_id) & ~torch.isnan(factor)
                if rows.any():
                    x[rows] = fn(x[rows], factor[rows].to(x.dtype)).clamp(0, 1)
        return x


class Grayscale(Op):
    """torchvision's RandomGrayscale (ITU-R 601 luma, as PIL's convert("L")), three channels kept."""

    width = 1

    def __init__(self, p: float):
        self.p = p

    def draw(self, image) -> list[float]:
        return [float(torch.rand(1) < self.p)]

    def apply(self, x, p, mask):
        from kornia.color import rgb_to_grayscale

        return _where(mask & (p[:, 0] > 0), rgb_to_grayscale(x).expand_as(x), x)


class Blur(Op):
    """lightly's GaussianBlur: applied with `prob`, sigma uniform in `sigmas` (both numpy draws, as lightly's)."""

    width = 2  # applied, sigma

    def __init__(self, blur):
        self.prob, self.sigmas = blur.prob, tuple(blur.sigmas)

    def draw(self, image) -> list[float]:
        if np.random.random_sample() < self.prob:
            return [1.0, float(np.random.uniform(self.sigmas[0], self.sigmas[1]))]
        return [0.0, 0.0]

    def apply(self, x, p, mask):
        from kornia.filters import gaussian_blur2d

        rows, x = mask & (p[:, 0] > 0), x.clone()
        k = 2 * math.ceil(3 * max(self.sigmas)) + 1  # PIL's radius is the Gaussian's sigma; +-3 sigma covers it
        sigma = p[rows, 1:2].expand(-1, 2).to(x.dtype)
        x[rows] = gaussian_blur2d(x[rows], (k, k), sigma, border_type="replicate")  # PIL extends the edge
        return x


class Solarize(Op):
    """lightly's RandomSolarization: values at or above threshold/255 become 1 - value (PIL's ImageOps.solarize)."""

    width = 1

    def __init__(self, sol):
        self.prob, self.threshold = sol.prob, sol.threshold

    def draw(self, image) -> list[float]:
        return [float(np.random.random_sample() < self.prob)]

    def apply(self, x, p, mask):
        from kornia.enhance import solarize

        # thresholds just under k/255 so that a value exactly k/255 (an 8-bit k) counts as >= threshold
        return _where(mask & (p[:, 0] > 0), solarize(x, thresholds=(self.threshold - 0.5) / 255), x)


class Apply(Op):
    """torchvision's RandomApply: one `torch.rand(1) < p` for the group; the inner ops draw only when applied."""

    def __init__(self, p: float, ops: list[Op]):
        self.p, self.ops = p, ops
        self.width = 1 + sum(op.width for op in ops)

    def draw(self, image) -> list[float]:
        if torch.rand(1) >= self.p:
            return [0.0] * self.width
        return [1.0] + [value for op in self.ops for value in op.draw(image)]

    def apply(self, x, p, mask):
        mask, at = mask & (p[:, 0] > 0), 1
        for op in self.ops:
            x = op.apply(x, p[:, at:at + op.width], mask)
            at += op.width
        return x



def _leaf(op) -> Op | None:
    """The device op for one CPU op; None for ToTensor (the device path is float throughout)."""
    from lightly.transforms.gaussian_blur import GaussianBlur
    from lightly.transforms.rotation import RandomRotate
    from lightly.transforms.solarize import RandomSolarization
    from torchvision.transforms import v2

    name = type(op).__name__
    if name == "ToTensor":  # lightly's own or torchvision's: pixels to [0, 1], nothing drawn
        return None
    if isinstance(op, (v2.RandomHorizontalFlip, v2.RandomVerticalFlip)):
        return Flip(op.p, isinstance(op, v2.RandomHorizontalFlip))
    if isinstance(op, v2.RandomApply):
        return Apply(op.p, [leaf for leaf in map(_leaf, _flatten(list(op.transforms))) if leaf is not None])
    if isinstance(op, v2.ColorJitter):
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
    from torchvision.transforms import v2

    out = []
    for op in ops:
        if type(op).__name__ == "ToTensor":  # lightly's wraps a Compose of its own: kept whole
            out.append(op)
        elif isinstance(op, v2.Compose):
            out += _flatten(list(op.transforms))
        elif type(op).__name__ == "RandomRotateDegrees":  # lightly: RandomApply([RandomRotation])
            out += _flatten([op.transform])
        elif isinstance(getattr(op, "transform", None), v2.Compose):
            out += _flatten([op.transform])
        else:
            out.append(op)
    return out


class View:
    """One view: a crop (its first op), then the other ops in order, each with its parameter slots."""

    def __init__(self, view_transform):
        from torchvision.transforms import v2

        ops = _flatten([view_transform])
        if not ops or not isinstance(ops[0], v2.RandomResizedCrop):
            first = type(ops[0]).__name__ if ops else "nothing"
            raise Unsupported(f"a view that starts with {first}, not a RandomResizedCrop")
        self.crop = Crop(ops[0])
        self.ops = [leaf for leaf in map(_leaf, ops[1:]) if leaf is not None]
        self.width = self.crop.width + sum(op.width for op in self.ops)

    def draw(self, image) -> list[float]:
        return self.crop.draw(image) + [value for op in self.ops for value in op.draw(image)]

    def make(self, images: torch.Tensor, p: torch.Tensor, shrink: torch.Tensor) -> torch.Tensor:
        x = self.crop.crop(images, p[:, :4], shrink)
        mask, at = torch.ones(len(x), dtype=torch.bool, device=x.device), self.crop.width
        for op in self.ops:
            x = op.apply(x, p[:, at:at + op.width], mask)
            at += op.width
        return x


def view_plan(transform) -> list[View]:
    """The device plan of a method's view transform; Unsupported names the first op without a device path."""
    from lightly.transforms.multi_view_transform import MultiViewTransform

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
        if n_image_views is not None:  # grids, masks, labels after the images: the method's own view class
            raise Unsupported(f"{type(transform).__name__}, which returns more than images")
        return view_plan(transform)
    except Unsupported as err:
        raise UserError(f"method {method_cls.name}'s views ({err}) have no device path yet; use --augment cpu") \
            from None


class DeviceViewsTransform:
    """The worker's half: (decoded image) -> [uint8 (H, W, 3) pixels, (n_views, width) float64 parameters, the
    factor the image was reduced by]. Called inside ViewsDataset's seeded context, so its draws are the CPU path's."""

    def __init__(self, plan: list[View]):
        self.plan, self.width = plan, max(view.width for view in plan)
        self.max_side = MAX_SIDE_FACTOR * max(max(view.crop.size) for view in plan)

    def __call__(self, image) -> list[torch.Tensor]:
        params = np.zeros((len(self.plan), self.width))
        for k, view in enumerate(self.plan):  # views in MultiViewTransform's order: the CPU path's RNG sequence
            drawn = view.draw(image)
            params[k, :len(drawn)] = drawn
        shrink = max(1, math.ceil(max(image.size) / self.max_side))
        if shrink > 1:  # boxes stay in the decoded image's pixels; the device divides them by `shrink`
            image = image.reduce(shrink)
        pixels = torch.from_numpy(np.array(image if image.mode == "RGB" else image.convert("RGB")))  # one copy
        return [pixels, torch.from_numpy(params), torch.tensor(float(shrink), dtype=torch.float64)]


def collate_device_views(batch: list[dict]) -> dict[str, Any]:
    """Images padded (bottom, right) to the batch's largest by repeating their last row and column (PIL's resize
    clamps at the edge; zeros would darken crops that touch it), parameters and shrink factors stacked; the first
    decode error passed through, as harness.data.collate_views does."""
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
    return {"inputs": [pixels, torch.stack([item["inputs"][1] for item in batch]),
                       torch.stack([item["inputs"][2] for item in batch])]}


class DeviceViewsPreprocessor(BaseDataPreprocessor):
    """Moves decoded images + parameters to the device, makes the views there, normalised as ViewsPreprocessor's."""

    def __init__(self, plan: list[View]):
        super().__init__()
        self.plan = plan
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        if "inputs" in data:
            pixels, params, shrink = data["inputs"]
            # views in float32 even under --amp (the engine calls this inside the autocast context), as the CPU path's
            with torch.autocast(pixels.device.type, enabled=False):
                images = pixels.permute(0, 3, 1, 2).float().div_(255)
                params, shrink = params.float(), shrink.float()
                data["inputs"] = [(view.make(images, params[:, k], shrink) - self.mean) / self.std
                                  for k, view in enumerate(self.plan)]
        return data
