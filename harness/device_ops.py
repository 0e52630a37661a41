"""The device ops of harness.device_views: one class per CPU view op, each drawing its parameters with the CPU op's
own calls (in a loader worker) and making its pixels for a whole batch with kornia (on the model's device).

Each op's `draw` consumes the RNGs exactly as the CPU op's call does, so that the same per-sample seed gives the same
parameters on both paths; `apply` changes the rows `mask` of a (B, 3, H, W) float batch in [0, 1].
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch


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


def bernoulli(p: float, at_p: bool = False) -> float:
    """1.0 where torchvision's `torch.rand(1) < p` holds (`at_p`: `<= p`, v1 RandomApply's `p < rand` skip), from the
    same draw: torch compares a float32 tensor with a Python number in float32, so p is rounded to float32 first; the
    scalar comparison is ~3x faster per draw."""
    r, p32 = torch.rand(1).item(), float(np.float32(p))
    return float(r <= p32 if at_p else r < p32)


def _where(mask: torch.Tensor, changed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), changed, x)


class Crop(Op):
    """torchvision's RandomResizedCrop: the box drawn by its own make_params; pixels by kornia crop_and_resize."""

    width = 4  # top, left, height, width, in the shipped image's pixels

    def __init__(self, rrc, by_get_params: bool = False):
        # lightly's RandomResizedCropWithLocation and LVM-Med's crop (methods/blocks/crop_grid.py) draw their box by
        # torchvision's static get_params, not make_params: the same torch draws, called as those ops call them
        self.by_get_params = by_get_params
        mode = str(getattr(rrc.interpolation, "value", rrc.interpolation))  # an InterpolationMode or its name
        if mode not in ("bilinear", "bicubic"):
            raise Unsupported(f"RandomResizedCrop with {mode} interpolation")
        self.rrc, self.size, self.mode = rrc, tuple(rrc.size), mode

    def draw(self, image) -> list[float]:
        if self.by_get_params:
            return list(self.rrc.get_params(image, self.rrc.scale, self.rrc.ratio))
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
        return [bernoulli(self.p)]  # _RandomApplyTransform skips when rand >= p

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
    """torchvision's ColorJitter: order and factors from its make_params (v2) or get_params (v1, as its forward
    calls it), pixels by kornia's blend-based adjusts (torchvision's definitions: brightness scales, contrast and
    saturation blend with the grey mean / grey image)."""

    width = 8  # the order of the four adjustments, then brightness, contrast, saturation, hue (NaN: not set)

    def __init__(self, cj):
        self.cj = cj

    def draw(self, image) -> list[float]:
        cj = self.cj
        if hasattr(cj, "make_params"):
            params = cj.make_params([])
            order, factors = params["fn_idx"], [params[f"{k}_factor"] for k in ("brightness", "contrast",
                                                                                 "saturation", "hue")]
        else:
            order, *factors = cj.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue)
        order = order.tolist() if isinstance(order, torch.Tensor) else order
        return [float(i) for i in order] + [math.nan if f is None else float(f) for f in factors]

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
        return [bernoulli(self.p)]

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
    """torchvision's RandomApply: one `torch.rand(1)` against p for the group; the inner ops draw only when applied.
    v2 applies when rand < p, v1 unless p < rand (`v1`): the same comparison, so a tie goes the CPU op's way."""

    def __init__(self, p: float, ops: list[Op], v1: bool = False):
        self.p, self.ops, self.v1 = p, ops, v1
        self.width = 1 + sum(op.width for op in ops)

    def draw(self, image) -> list[float]:
        if not bernoulli(self.p, at_p=self.v1):
            return [0.0] * self.width
        return [1.0] + [value for op in self.ops for value in op.draw(image)]

    def apply(self, x, p, mask):
        mask, at = mask & (p[:, 0] > 0), 1
        for op in self.ops:
            x = op.apply(x, p[:, at:at + op.width], mask)
            at += op.width
        return x


class Choice(Op):
    """torchvision's (v1) RandomChoice: one op picked by the CPU op's own `random.choices` over its list (Python's
    RNG, seeded per sample by harness.data); only the picked op draws."""

    def __init__(self, choice, ops: list[Op]):
        self.choice, self.ops = choice, ops  # the CPU op (its list and weights), its ops' device counterparts
        self.width = 1 + sum(op.width for op in ops)  # the picked op's index, then each op's slots

    def draw(self, image) -> list[float]:
        picked = self.choice.transforms.index(random.choices(self.choice.transforms, weights=self.choice.p)[0])
        out = [float(picked)]
        for k, op in enumerate(self.ops):
            out += op.draw(image) if k == picked else [0.0] * op.width
        return out

    def apply(self, x, p, mask):
        at = 1
        for k, op in enumerate(self.ops):
            x = op.apply(x, p[:, at:at + op.width], mask & (p[:, 0] == k))
            at += op.width
        return x


class Affine(Op):
    """torchvision's (v1) RandomAffine without shear or centre: angle, translation, scale drawn by its own get_params
    on the view's size (its forward's call), pixels by kornia's warp_affine with torchvision's matrix (rotation about
    the image centre, then the shift; nearest or bilinear and the fill as the CPU op's)."""

    width = 4  # angle (degrees), tx, ty (pixels), scale

    def __init__(self, op, size: tuple[int, int]):
        mode = str(getattr(op.interpolation, "value", op.interpolation))
        if op.shear is not None or op.center is not None or mode not in ("nearest", "bilinear"):
            why = "shear" if op.shear is not None else "a centre" if op.center is not None else f"{mode} interpolation"
            raise Unsupported(f"RandomAffine with {why}")
        fill = 0 if op.fill is None else op.fill
        fill = [float(fill)] * 3 if isinstance(fill, (int, float)) else [float(f) for f in fill]
        self.op, self.size, self.mode, self.fill = op, tuple(size), mode, fill

    def draw(self, image) -> list[float]:
        op, (height, width) = self.op, self.size
        angle, (tx, ty), scale, _ = op.get_params(op.degrees, op.translate, op.scale, op.shear, [width, height])
        return [angle, float(tx), float(ty), scale]

    def apply(self, x, p, mask):
        from kornia.geometry.transform import get_affine_matrix2d, warp_affine

        rows, x = mask, x.clone()
        if not rows.any():
            return x
        q, (height, width) = p[rows].to(x.dtype), x.shape[-2:]
        # kornia's pixel centres are integers, PIL's (torchvision's) at +0.5: the image centre is ((W-1)/2, (H-1)/2);
        # kornia's angle runs as torchvision's affine angle (tests/test_device_views_ark_genesis.py checks it)
        centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=x.dtype, device=x.device).expand(len(q), 2)
        matrix = get_affine_matrix2d(q[:, 1:3], centre, q[:, 3:4].expand(-1, 2), q[:, 0])
        fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device) / 255
        x[rows] = warp_affine(x[rows], matrix[:, :2], (height, width), mode=self.mode,
                              padding_mode="fill" if any(self.fill) else "zeros", align_corners=True,
                              fill_value=fill if any(self.fill) else None)
        return x


class Gamma(Op):
    """A gamma correction x ** g (torchvision's adjust_gamma, gain 1) with g drawn by the CPU op's own `draw`
    (a picklable callable) and applied by kornia's adjust_gamma."""

    width = 1

    def __init__(self, draw):
        self.draw_gamma = draw

    def draw(self, image) -> list[float]:
        return [float(self.draw_gamma())]

    def apply(self, x, p, mask):
        from kornia.enhance import adjust_gamma

        x = x.clone()
        if mask.any():
            x[mask] = adjust_gamma(x[mask], p[mask, 0].to(x.dtype))
        return x


class WholeImage(Crop):
    """torchvision's Resize to a fixed (height, width): the whole image as a crop box, nothing drawn."""

    def __init__(self, resize):
        mode, size = str(getattr(resize.interpolation, "value", resize.interpolation)), resize.size
        if not isinstance(size, (list, tuple)) or len(size) != 2 or mode not in ("bilinear", "bicubic"):
            raise Unsupported(f"Resize to {size} with {mode} interpolation (a fixed height and width only)")
        self.size, self.mode = tuple(size), mode

    def draw(self, image) -> list[float]:
        return [0.0, 0.0, float(image.height), float(image.width)]
