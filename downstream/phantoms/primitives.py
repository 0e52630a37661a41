"""Shared drawing primitives for the phantom generators (numpy + OpenCV, float32).

Coordinates are normalised: the image spans [-1, 1] on both axes, x to the right (columns),
y downwards (rows); `size` is the side in pixels. Shapes return soft masks in [0, 1] and are
evaluated only inside their bounding box, so small objects are cheap. All randomness comes
from the `np.random.Generator` passed in, which makes every image reproducible.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import cv2
import numpy as np

F32 = np.float32
RAYLEIGH_MEAN = math.sqrt(math.pi / 2.0)  # mean of a Rayleigh(sigma=1) variable
RAYLEIGH_CV = math.sqrt((4.0 - math.pi) / math.pi)  # std/mean of a Rayleigh variable, 0.5227


@functools.lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only (yy, xx) pixel-centre coordinates in [-1, 1]."""
    c = (np.arange(size, dtype=F32) + 0.5) * F32(2.0 / size) - F32(1.0)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def to_px(size: int, pts: np.ndarray) -> np.ndarray:
    """Normalised (..., 2) points -> pixel coordinates (x, y)."""
    return (np.asarray(pts, dtype=np.float64) + 1.0) * (size / 2.0) - 0.5


class Frame(NamedTuple):
    """A similarity transform (rotate, scale, shift) applied to a whole scene."""

    angle: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    def pt(self, x: float, y: float) -> tuple[float, float]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return (self.shift[0] + self.scale * (c * x - s * y),
                self.shift[1] + self.scale * (s * x + c * y))

    def pts(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.array([[c, s], [-s, c]]) * self.scale
        return p @ rot + np.asarray(self.shift)


def random_frame(rng: np.random.Generator, angle: float, scale: tuple[float, float],
                 shift: float) -> Frame:
    return Frame(float(rng.normal(0.0, angle)), float(rng.uniform(*scale)),
                 (float(rng.normal(0.0, shift)), float(rng.normal(0.0, shift))))


# ----------------------------------------------------------------------------- noise fields
def smooth_noise(rng: np.random.Generator, size: int, cells: int = 4, channels: int = 0) -> np.ndarray:
    """Unit-std smooth random field: a (cells+1)^2 random lattice, bicubically upsampled."""
    shape = (cells + 1, cells + 1) + ((channels,) if channels else ())
    lattice = rng.standard_normal(shape).astype(F32)
    field = cv2.resize(lattice, (size, size), interpolation=cv2.INTER_CUBIC)
    field -= field.mean(axis=(0, 1))
    return field / (field.std(axis=(0, 1)) + F32(1e-6))


def fractal_noise(rng: np.random.Generator, size: int, cells: int = 3, octaves: int = 3,
                  persistence: float = 0.5, channels: int = 0) -> np.ndarray:
    out, amp, total = None, 1.0, 0.0
    for o in range(octaves):
        layer = smooth_noise(rng, size, min(cells * 2 ** o, size // 2), channels) * F32(amp)
        out = layer if out is None else out + layer
        total += amp * amp
        amp *= persistence
    return out / F32(math.sqrt(total))


def bias_field(rng: np.random.Generator, size: int, strength: float, cells: int = 2) -> np.ndarray:
    """Smooth multiplicative field exp(strength * noise) (MR/US shading, illumination)."""
    return np.exp(F32(strength) * smooth_noise(rng, size, cells))


def vignette(size: int, strength: float, radius: float = 1.0, power: float = 2.0,
             center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    yy, xx = grid(size)
    r = np.hypot(xx - F32(center[0]), yy - F32(center[1])) / F32(radius)
    return (F32(1.0) - F32(strength) * np.minimum(r, F32(1.5)) ** F32(power)).clip(0.0, 1.0)


# ----------------------------------------------------------------------------- noise models
def gaussian_noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    return img + rng.standard_normal(img.shape, dtype=F32) * F32(sigma)


def rician_noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise on both channels (MR)."""
    re = img + rng.standard_normal(img.shape, dtype=F32) * F32(sigma)
    im = rng.standard_normal(img.shape, dtype=F32) * F32(sigma)
    return np.hypot(re, im)


def poisson_noise(rng: np.random.Generator, img: np.ndarray, photons: float) -> np.ndarray:
    """Quantum noise: Poisson counts with `photons` expected counts per unit intensity."""
    lam = np.clip(img, 0.0, None).astype(np.float64) * photons
    return (rng.poisson(lam) / photons).astype(F32)


def rayleigh_speckle(rng: np.random.Generator, shape: tuple[int, int],
                     grain: tuple[float, float] = (0.8, 1.2)) -> np.ndarray:
    """Fully developed speckle with unit mean: the envelope of a spatially correlated
    circular complex Gaussian field (grain = (axial, lateral) sigma in pixels). Filtering
    keeps the field Gaussian, so the envelope stays Rayleigh (std/mean = 0.5227)."""
    re = rng.standard_normal(shape, dtype=F32)
    im = rng.standard_normal(shape, dtype=F32)
    if max(grain) > 0:
        re = cv2.GaussianBlur(re, (0, 0), sigmaX=grain[1], sigmaY=grain[0])
        im = cv2.GaussianBlur(im, (0, 0), sigmaX=grain[1], sigmaY=grain[0])
    scale = math.sqrt(0.5 * (float(re.var()) + float(im.var()))) * RAYLEIGH_MEAN
    return np.hypot(re, im) / F32(scale)


# ----------------------------------------------------------------------------- shapes
def _window(size: int, cx: float, cy: float, ext: float):
    """Bounding-box slices around (cx, cy) +- ext and local offsets, or None if off-image."""
    half = size / 2.0
    x0, x1 = max(0, int((cx - ext + 1) * half) - 1), min(size, int((cx + ext + 1) * half) + 2)
    y0, y1 = max(0, int((cy - ext + 1) * half) - 1), min(size, int((cy + ext + 1) * half) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    yy, xx = grid(size)
    sl = (slice(y0, y1), slice(x0, x1))
    return sl, yy[sl] - F32(cy), xx[sl] - F32(cx)


class Harmonics(NamedTuple):
    k: np.ndarray
    amp: np.ndarray
    phase: np.ndarray

    @property
    def total(self) -> float:
        return float(np.abs(self.amp).sum())


NO_HARMONICS = Harmonics(np.zeros(0), np.zeros(0), np.zeros(0))


def harmonics(rng: np.random.Generator, n: int = 5, irregularity: float = 0.2, kmin: int = 2,
              decay: float = 1.0) -> Harmonics:
    """Random radius modulation r(t) = 1 + sum a_k cos(k t + p_k), with sum |a_k| = irregularity."""
    k = np.arange(kmin, kmin + n, dtype=np.float64)
    amp = rng.uniform(0.2, 1.0, n) / k ** decay
    amp *= irregularity / max(amp.sum(), 1e-9)
    return Harmonics(k, amp, rng.uniform(0.0, 2 * math.pi, n))


def star_field(size: int, center, radii, harm: Harmonics = NO_HARMONICS, rot: float = 0.0):
    """Normalised radial coordinate q = rho / r(theta) of a star-shaped region (q < 1 inside).

    Returns (slices, q) over the bounding box, or None if the shape is off-image."""
    rx, ry = float(radii[0]), float(radii[1])
    win = _window(size, center[0], center[1], max(rx, ry) * (1.0 + harm.total) + 2.0 / size)
    if win is None or min(rx, ry) <= 0:
        return None
    sl, dy, dx = win
    c, s = F32(math.cos(rot)), F32(math.sin(rot))
    u = (c * dx + s * dy) / F32(rx)
    v = (c * dy - s * dx) / F32(ry)
    q = np.hypot(u, v)
    if len(harm.k):
        theta = np.arctan2(v, u)
        r = np.ones_like(q)
        for k, a, p in zip(harm.k, harm.amp, harm.phase):
            r += F32(a) * np.cos(F32(k) * theta + F32(p))
        q /= r
    return sl, q


def star_blob(size: int, center, radii, harm: Harmonics = NO_HARMONICS, rot: float = 0.0,
              soft: float = 1.0) -> np.ndarray:
    """Soft mask of a star-shaped blob (an ellipse with harmonic radius modulation)."""
    out = np.zeros((size, size), F32)
    res = star_field(size, center, radii, harm, rot)
    if res is not None:
        sl, q = res
        edge_px = min(radii) * size / 2.0 / max(soft, 1e-3)
        out[sl] = ((F32(1.0) - q) * F32(edge_px) + F32(0.5)).clip(0.0, 1.0)
    return out


def superellipse(size: int, center, radii, n: float = 2.0, rot: float = 0.0,
                 soft: float = 1.0) -> np.ndarray:
    """Soft mask of |u/a|^n + |v/b|^n <= 1 (n=2 ellipse, n>2 boxy, n<2 diamond-like)."""
    out = np.zeros((size, size), F32)
    a, b = float(radii[0]), float(radii[1])
    win = _window(size, center[0], center[1], max(a, b) * 1.42)
    if win is None:
        return out
    sl, dy, dx = win
    c, s = F32(math.cos(rot)), F32(math.sin(rot))
    u = np.abs((c * dx + s * dy) / F32(a))
    v = np.abs((c * dy - s * dx) / F32(b))
    f = (u ** F32(n) + v ** F32(n)) ** F32(1.0 / n)
    out[sl] = ((F32(1.0) - f) * F32(min(a, b) * size / 2.0 / max(soft, 1e-3)) + F32(0.5)).clip(0, 1)
    return out


def gaussian_blob(size: int, center, sigma: float, aspect: float = 1.0, rot: float = 0.0) -> np.ndarray:
    out = np.zeros((size, size), F32)
    win = _window(size, center[0], center[1], 3.0 * sigma * max(aspect, 1.0))
    if win is not None:
        sl, dy, dx = win
        c, s = F32(math.cos(rot)), F32(math.sin(rot))
        u = (c * dx + s * dy) / F32(sigma * aspect)
        v = (c * dy - s * dx) / F32(sigma)
        out[sl] = np.exp(-F32(0.5) * (u * u + v * v))
    return out


def paint(img: np.ndarray, mask: np.ndarray, value) -> np.ndarray:
    """Alpha-composite a constant (scalar or colour) over img where mask (in [0, 1]) is set."""
    if img.ndim == 3:
        return img + mask[..., None] * (np.asarray(value, F32) - img)
    return img + mask * (F32(value) - img)


# ----------------------------------------------------------------------------- curves
def bezier(ctrl: np.ndarray, n: int = 24) -> np.ndarray:
    """Points on a cubic Bezier curve with 4 control points (4, 2)."""
    p = np.asarray(ctrl, dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return ((1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1]
            + 3 * (1 - t) * t ** 2 * p[2] + t ** 3 * p[3])


def draw_curve(canvas: np.ndarray, pts: np.ndarray, width_px: float, value: float = 255) -> None:
    """Antialiased polyline (normalised points) drawn in place on a uint8 canvas."""
    px = np.round(to_px(canvas.shape[0], pts) * 16).astype(np.int32).reshape(-1, 1, 2)
    thick = max(1, int(round(width_px)))
    level = value * min(1.0, max(width_px, 0.3))
    cv2.polylines(canvas, [px], False, float(level), thick, cv2.LINE_AA, shift=4)


def vessel_segments(rng: np.random.Generator, size: int, root, angle: float, width_px: float, *,
                    step: float = 0.04, curl: float = 0.12, bend: float = 0.0,
                    taper: float = 0.985, branch_every: tuple[int, int] = (3, 8),
                    spread: tuple[float, float] = (0.4, 1.0), min_width_px: float = 0.45,
                    max_depth: int = 6, max_segments: int = 600,
                    limit: float = 1.0) -> list[tuple[float, float, float, float, float]]:
    """A branching vessel tree grown by recursive random walks with tapering width.

    Each walk turns by Gaussian jitter (`curl`) plus a steady `bend`; every few steps it
    forks: the child leaves at +-`spread` radians and the widths follow Murray's law
    (w^3 = w1^3 + w2^3). Returns segments (x0, y0, x1, y1, width_px) in normalised space.
    """
    segs: list[tuple[float, float, float, float, float]] = []
    stack = [(float(root[0]), float(root[1]), float(angle), float(width_px), 0, float(bend))]
    cos, sin, jit = math.cos, math.sin, 2.0 * math.sqrt(3.0) * curl  # uniform jitter, std = curl
    lo, span = branch_every[0], branch_every[1] - branch_every[0] + 1
    pool, at = rng.random(4 * max_segments + 64).tolist(), 0
    while stack and len(segs) < max_segments:
        x, y, ang, w, depth, bnd = stack.pop()
        fork = lo + int(pool[at % len(pool)] * span)
        for i in range(1, 65):
            if w < min_width_px or abs(x) > limit or abs(y) > limit or len(segs) >= max_segments:
                break
            u = pool[at % len(pool)]
            at += 1
            ang += (u - 0.5) * jit + bnd
            nx, ny = x + step * cos(ang), y + step * sin(ang)
            segs.append((x, y, nx, ny, w))
            x, y, w = nx, ny, w * taper
            if i == fork and depth < max_depth:
                a, b, c, d = (pool[(at + j) % len(pool)] for j in range(4))
                at += 4
                side = 1.0 if a < 0.5 else -1.0
                child_w = w * (0.55 + 0.3 * b)
                w = max(w ** 3 - child_w ** 3, 0.0) ** (1.0 / 3.0)
                stack.append((x, y, ang + side * (spread[0] + (spread[1] - spread[0]) * c),
                              child_w, depth + 1, -side * abs(bnd) * 0.5))
                ang -= side * (0.05 + 0.2 * d)
                fork = i + lo + int(d * span)
    return segs


def render_segments(size: int, segs, value: float = 255) -> np.ndarray:
    """Rasterise vessel segments (thin first, so wider parents win at junctions) to [0, 1]."""
    canvas = np.zeros((size, size), np.uint8)
    if segs:
        arr = np.array(sorted(segs, key=lambda s: s[4]), dtype=np.float64)
        pts = np.round(((arr[:, :4] + 1.0) * (size / 2.0) - 0.5) * 16).astype(np.int64).tolist()
        levels = (value * np.minimum(arr[:, 4], 1.0)).tolist()
        thick = np.maximum(1, np.round(arr[:, 4])).astype(np.int64).tolist()
        line, aa = cv2.line, cv2.LINE_AA
        for (x0, y0, x1, y1), lv, th in zip(pts, levels, thick):
            line(canvas, (x0, y0), (x1, y1), lv, th, aa, 4)
    return canvas.astype(F32) / F32(255.0)


def draw_ellipse(canvas: np.ndarray, center, axes, deg: float, level: float) -> None:
    """Filled antialiased ellipse (normalised centre and semi-axes) drawn in place (uint8)."""
    half = canvas.shape[0] / 2.0
    cen = (int(((center[0] + 1) * half - .5) * 16), int(((center[1] + 1) * half - .5) * 16))
    ax = (max(8, int(axes[0] * half * 16)), max(8, int(axes[1] * half * 16)))
    cv2.ellipse(canvas, cen, ax, deg, 0, 360, float(level), -1, cv2.LINE_AA, shift=4)


def lambert(height: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Lambertian shading of a height field (normalised units) lit from unit vector `light`."""
    gy, gx = np.gradient(height, F32(2.0 / height.shape[0]))
    num = F32(light[2]) - gx * F32(light[0]) - gy * F32(light[1])
    return num / np.sqrt(gx * gx + gy * gy + F32(1))


def sector_field(size: int, apex_y: float | None, half: float, dmin: float,
                 dmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Ultrasound field of view and normalised depth in [0, 1].

    Sector probe: apex at (0, apex_y), half-angle `half` (rad), radii [dmin, dmax].
    Linear probe (apex_y None): |x| < half, depth = distance from the top edge."""
    yy, xx = grid(size)
    px, edge = F32(size / 2.0), lambda v: np.clip(v * F32(size / 2.0) + F32(.5), 0, 1)  # noqa: E731
    if apex_y is None:
        return edge(F32(half) - np.abs(xx)) * np.ones_like(yy), (yy + F32(1)) / F32(2)
    d, ang = np.hypot(xx, yy - F32(apex_y)), np.arctan2(xx, yy - F32(apex_y))
    fan = np.clip((F32(half) - np.abs(ang)) * d * px + F32(.5), 0, 1)
    fan *= edge(d - F32(dmin)) * edge(F32(dmax) - d)
    return fan, np.clip((d - F32(dmin)) / F32(dmax - dmin), 0, 1)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * F32(255.0) + F32(0.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- scenes
def record(masks: dict | None, name: str | None, m: np.ndarray) -> None:
    """Keep `masks` as visible-structure maps: a new layer hides what lies below it."""
    if masks is None:
        return
    for key in masks:
        if key != name:
            masks[key] *= F32(1.0) - m
    if name:
        masks[name] = np.maximum(masks[name], m) if name in masks else m.copy()


class Shape(NamedTuple):
    """A star-shaped structure; its cross-section shrinks as sqrt(1 - ((z - z0) / zr)^2)."""

    name: str
    c: tuple[float, float]
    r: tuple[float, float]
    value: float | str
    harm: Harmonics = NO_HARMONICS
    rot: float = 0.0
    z0: float = 0.0
    zr: float = math.inf
    drift: tuple[float, float] = (0.0, 0.0)
    soft: float = 1.0


def render_scene(size: int, objs: list[Shape], frame: Frame, z: float, base: float, lut: dict,
                 masks: dict | None) -> np.ndarray:
    """Paint shapes in order (later ones on top) at slice position z; string values go
    through `lut` (tissue name -> intensity)."""
    img = np.full((size, size), base, F32)
    for o in objs:
        prof = 1.0 - ((z - o.z0) / o.zr) ** 2
        if prof <= 0.02:
            continue
        s = math.sqrt(prof) * frame.scale
        c = frame.pt(o.c[0] + o.drift[0] * z, o.c[1] + o.drift[1] * z)
        m = star_blob(size, c, (o.r[0] * s, o.r[1] * s), o.harm, o.rot + frame.angle, o.soft)
        img = paint(img, m, lut.get(o.value, o.value) if isinstance(o.value, str) else o.value)
        record(masks, o.name, m)
    return img
