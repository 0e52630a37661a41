"""BCCD-like blood smear with its Pascal VOC objects (the synthetic BCCD writer, docs/datasets.md).

A thin Wright/Giemsa-stained smear as in BCCD's 640x480 microscope frames, drawn at any width
(height = 3/4 of it) with every length scaled by width / 128:
- background: pale pink plasma, a slight low-frequency unevenness (mostly in brightness) and fine grain;
- RBCs (8-15): pink discs, slightly elliptical, with a pale centre (central pallor); they may
  overlap a little and cross the image border (VOC `truncated` = 1); an RBC overlapping another
  strongly is marked `difficult` = 1;
- WBCs (0-2, mostly 1): about twice an RBC across, a lilac cytoplasm halo around a dark purple
  nucleus of 2-4 lobes;
- platelets (0-4): tiny purple dots of 1-3 fused granules, in the gaps between the cells.
The classes differ in size (platelet << RBC < WBC), colour (pink vs purple) and texture (pale
centre vs lobed nucleus), so a small detector can tell them apart. Colours follow Beer-Lambert:
each object adds optical density, overlaps are darker.

Boxes come from each object's own coverage (>= 0.5) before compositing, so a cell partly hidden
by another keeps its whole box, as annotators draw it; clipped to the image as VOC does. VOC
coordinates are 1-based inclusive pixel indices: an object covering pixel columns c0..c1
(0-based) has xmin = c0 + 1, xmax = c1 + 1; one touching the right border has xmax = width.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

F32 = np.float32
BACKGROUND = np.array([0.95, 0.87, 0.86], F32)  # transmitted light through plasma (RGB)
OD_RBC = np.array([0.05, 0.48, 0.40], F32)  # haemoglobin + eosin: absorbs green/blue -> pink
OD_CYTOPLASM = np.array([0.16, 0.20, 0.05], F32)  # lilac
OD_NUCLEUS = np.array([0.80, 1.15, 0.35], F32)  # azure/methylene blue: dark purple
OD_PLATELET = np.array([0.60, 0.85, 0.30], F32)
MIN_VISIBLE = 0.45  # an object clipped to less than this share of its width or height is not drawn


class SmearObject(NamedTuple):
    name: str  # "WBC", "RBC" or "Platelets" (BCCD's spelling)
    xmin: int  # VOC: 1-based inclusive pixel indices, clipped to the image
    ymin: int
    xmax: int
    ymax: int
    truncated: int
    difficult: int


class Smear(NamedTuple):
    image: np.ndarray  # RGB uint8 (H, W, 3)
    objects: list[SmearObject]  # in drawing order: WBCs, RBCs, platelets


def smear_size(width: int) -> tuple[int, int]:
    """(height, width) of a frame `width` pixels wide: BCCD's 4:3 (640x480)."""
    return int(round(width * 3 / 4)), int(width)


class _Canvas:
    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        self.od = np.zeros((height, width, 3), F32)

    def field(self, cx: float, cy: float, extent: float):
        """(rows, cols) of the unclipped window around (cx, cy) and its pixel-centre grids."""
        r0, r1 = int(math.floor(cy - extent)) - 1, int(math.ceil(cy + extent)) + 2
        c0, c1 = int(math.floor(cx - extent)) - 1, int(math.ceil(cx + extent)) + 2
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(F32)
        return (r0, c0), yy - F32(cy), xx - F32(cx)

    def visible(self, origin, cover: np.ndarray):
        """The part of a window inside the image: (image slices, window slices)."""
        (r0, c0), (h, w) = origin, cover.shape
        ra, rb, ca, cb = max(r0, 0), min(r0 + h, self.h), max(c0, 0), min(c0 + w, self.w)
        if ra >= rb or ca >= cb:
            return None
        return (slice(ra, rb), slice(ca, cb)), (slice(ra - r0, rb - r0), slice(ca - c0, cb - c0))

    def box(self, origin, cover: np.ndarray):
        """VOC box (1-based inclusive, clipped) of cover >= 0.5 and whether the object was clipped;
        None when too little of it is inside the image."""
        inside = cover >= 0.5
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        if not len(rows):
            return None
        r0, c0 = origin
        full = (r0 + rows[0], c0 + cols[0], r0 + rows[-1], c0 + cols[-1])  # unclipped, 0-based inclusive
        y0, x0, y1, x1 = max(full[0], 0), max(full[1], 0), min(full[2], self.h - 1), min(full[3], self.w - 1)
        shown = ((x1 - x0 + 1) / (full[3] - full[1] + 1), (y1 - y0 + 1) / (full[2] - full[0] + 1))
        if min(shown) < MIN_VISIBLE:
            return None
        return (int(x0) + 1, int(y0) + 1, int(x1) + 1, int(y1) + 1), int((y0, x0, y1, x1) != full)

    def add(self, origin, density: np.ndarray, od: np.ndarray) -> None:
        sl = self.visible(origin, density)
        if sl is not None:
            self.od[sl[0]] += density[sl[1]][..., None] * od


def _ellipse(yy, xx, a: float, b: float, rot: float) -> np.ndarray:
    """Normalised elliptical radius q (1 on the outline) for semi-axes a, b rotated by rot."""
    c, s = math.cos(rot), math.sin(rot)
    u, v = (xx * c + yy * s) / F32(a), (-xx * s + yy * c) / F32(b)
    return np.sqrt(u * u + v * v)


def _coverage(q: np.ndarray, radius: float) -> np.ndarray:
    """Antialiased inside-ness of an outline q = 1 for a shape of about `radius` pixels."""
    return np.clip((F32(1) - q) * F32(radius) + F32(0.5), 0, 1)


def _place(rng, h, w, radius, others, gap, margin, tries=60):
    """A centre for a disc of `radius` keeping each (x, y, r, k) in `others` at distance >= k * (r + radius)
    + gap; `margin` (fraction of the radius) lets it cross the border. None if nothing fits."""
    for _ in range(tries):
        x, y = rng.uniform(-margin * radius, w + margin * radius), rng.uniform(-margin * radius, h + margin * radius)
        if all(math.hypot(x - ox, y - oy) >= k * (orad + radius) + gap for ox, oy, orad, k in others):
            return float(x), float(y)
    return None


def smear_sample(seed_key: list[int], width: int) -> Smear:
    """One synthetic smear `width` pixels wide (height 3/4 of it) and its objects.
    `seed_key` (a list of ints) keys the random stream, so the result is reproducible."""
    rng = np.random.default_rng(seed_key)
    U = rng.uniform
    h, w = smear_size(width)
    s = w / 128.0
    canvas, objects, cells = _Canvas(h, w), [], []

    for _ in range(int(rng.choice(3, p=[.1, .75, .15]))):  # WBCs, drawn first so RBCs keep clear
        big = U(17, 22) * s
        at = _place(rng, h, w, big, [(x, y, r, 1.0) for x, y, r, _ in cells], 0, -0.55)
        if at is None:
            continue
        origin, yy, xx = canvas.field(*at, big * 1.1)
        a, rot = big * U(.92, 1.0), U(0, math.pi)
        cyto = _coverage(_ellipse(yy, xx, a, big * U(.92, 1.0), rot), a)
        found = canvas.box(origin, cyto)
        if found is None:
            continue
        nucleus = np.zeros_like(cyto)
        for _ in range(rng.integers(2, 5)):  # lobes around the centre
            t, d = U(0, 2 * math.pi), U(.1, .35) * big
            lobe = _ellipse(yy - F32(d * math.sin(t)), xx - F32(d * math.cos(t)), U(.3, .42) * big,
                            U(.22, .32) * big, U(0, math.pi))
            nucleus = np.maximum(nucleus, _coverage(lobe, .3 * big))
        chromatin = F32(1) + F32(.25) * rng.standard_normal(cyto.shape).astype(F32)
        canvas.add(origin, cyto * F32(U(.8, 1.2)), OD_CYTOPLASM)
        canvas.add(origin, nucleus * cyto * chromatin * F32(U(.85, 1.15)), OD_NUCLEUS)
        cells.append((*at, big, "WBC"))
        objects.append(SmearObject("WBC", *found[0], found[1], 0))

    rbcs = []
    for _ in range(int(rng.integers(8, 16))):
        r = U(8.5, 11) * s
        others = [(x, y, rr, 1.0) for x, y, rr, _ in cells] + [(x, y, rr, .78) for x, y, rr in rbcs]
        at = _place(rng, h, w, r, others, 0, 0.5)
        if at is None:
            continue
        origin, yy, xx = canvas.field(*at, r * 1.1)
        a, rot = r * U(.9, 1.0), U(0, math.pi)
        q = _ellipse(yy, xx, a, r * U(.9, 1.0), rot)
        cover = _coverage(q, a)
        found = canvas.box(origin, cover)
        if found is None:
            continue
        pallor = F32(U(.5, .75)) * np.exp(-(q / F32(U(.38, .5))) ** 2)  # pale centre
        canvas.add(origin, cover * (F32(1) - pallor) * F32(U(.85, 1.15)), OD_RBC)
        crowded = any(math.hypot(at[0] - x, at[1] - y) < .85 * (r + rr) for x, y, rr in rbcs)
        rbcs.append((*at, r))
        objects.append(SmearObject("RBC", *found[0], found[1], int(crowded)))

    occupied = [(x, y, r, 1.0) for x, y, r, _ in cells] + [(x, y, r, 1.0) for x, y, r in rbcs]
    for _ in range(int(rng.choice(5, p=[.15, .35, .25, .15, .1]))):
        rp = U(2.2, 3.4) * s
        at = _place(rng, h, w, rp, occupied, 1.0, -1.0)
        if at is None:
            continue
        origin, yy, xx = canvas.field(*at, rp * 1.6)
        dot = np.zeros(yy.shape, F32)
        for k in range(rng.integers(1, 4)):  # fused granules
            off = (0.0, 0.0) if k == 0 else (U(-.6, .6) * rp, U(-.6, .6) * rp)
            dot = np.maximum(dot, _coverage(_ellipse(yy - F32(off[1]), xx - F32(off[0]), rp * U(.6, .9),
                                                     rp * U(.6, .9), U(0, math.pi)), rp * .7))
        found = canvas.box(origin, dot)
        if found is None:
            continue
        canvas.add(origin, dot * F32(U(.85, 1.15)), OD_PLATELET)
        occupied.append((*at, rp, 1.0))
        objects.append(SmearObject("Platelets", *found[0], found[1], 0))

    low = cv2.resize(rng.standard_normal((4, 4, 4)).astype(F32), (w, h), interpolation=cv2.INTER_CUBIC)
    light = BACKGROUND * (F32(1) + F32(.03) * low[..., :1] + F32(.01) * low[..., 1:]) * F32(U(.95, 1.02))
    img = light * np.exp(-canvas.od)
    img = cv2.GaussianBlur(img, (0, 0), .6 * math.sqrt(max(s, .5)))
    img = img + F32(.012) * rng.standard_normal(img.shape).astype(F32)
    return Smear(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), objects)
