"""Labelled phantom images for the classification datasets (docs/datasets.md).

The label lives in lesion counts/types (DR grade) or in tumour location/shape (brain MRI),
never in global intensity: lesion and tumour contrast, size and position are drawn
independently of the label, and brightness, gain, gamma, MR contrast, bias field and noise
vary per image. The tests check this with a shortcut probe (intensity statistics only must
stay near chance).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from medssl_bench.downstream.phantoms.modalities import _mr_scene, fundus
from medssl_bench.downstream.phantoms.primitives import (
    F32, Shape, bias_field, gaussian_blob, harmonics, paint, render_scene, render_segments,
    rician_noise, star_blob, vessel_segments,
)

DR_GRADES = (0, 1, 2, 3, 4)
TUMOURS = ("glioma", "meningioma", "no_tumor", "pituitary")

# Lesion counts per grade as (low, high) inclusive ranges (ICDR-like: 1 = microaneurysms only,
# 2 = + haemorrhages / hard exudates, 3 = many + cotton-wool spots, 4 = + neovascularisation).
_NPDR = {
    1: dict(ma=(1, 5), haem=(0, 0), exud=(0, 0), cws=(0, 0)),
    2: dict(ma=(3, 10), haem=(1, 5), exud=(0, 8), cws=(0, 0)),
    3: dict(ma=(6, 16), haem=(5, 14), exud=(3, 14), cws=(1, 4)),
}


def _count(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _dr_lesions(grade: int):
    """The `lesions` hook of `fundus` for one grade."""

    def draw(rng: np.random.Generator, img: np.ndarray, anat: dict) -> np.ndarray:
        size, U = img.shape[0], rng.uniform
        # Grade-independent bright distractors (nerve-fibre / internal limiting membrane light
        # reflexes, common in young eyes): they fill the bright histogram tail in every grade,
        # so exudates and cotton-wool spots cannot be counted from intensity statistics.
        for _ in range(int(rng.integers(0, 7))):
            m = gaussian_blob(size, (U(-.7, .7), U(-.7, .7)), U(.03, .09), U(1.5, 3.5), U(0, math.pi))
            img = paint(img, m * F32(U(.1, .45)), np.array([U(.9, 1), U(.85, .95), U(.7, .85)], F32))
        if grade == 0:
            return img
        px = 2.0 / 96  # lesion sizes are given in pixels of a 96-px image: they scale with it
        base, disc = np.asarray(anat["base"], F32), anat["disc"]
        spec = _NPDR[grade] if grade < 4 else _NPDR[int(rng.integers(2, 4))]
        red = lambda: base * np.array([U(.35, .55), U(.1, .2), U(.15, .25)], F32)  # noqa: E731

        def pos() -> tuple[float, float]:  # anywhere in the posterior pole, off the disc
            while True:
                p = (U(-.8, .8), U(-.8, .8))
                if math.hypot(*p) < .85 and math.hypot(p[0] - disc[0], p[1] - disc[1]) > .15:
                    return p

        for _ in range(_count(rng, spec["ma"])):  # microaneurysms: tiny dark-red dots
            m = gaussian_blob(size, pos(), U(.6, 1.4) * px) * F32(U(.5, 1))
            img = paint(img, m, red())
        for _ in range(_count(rng, spec["haem"])):  # dot-blot or flame haemorrhages
            if rng.random() < .6:
                m = star_blob(size, pos(), (U(1.2, 3.2) * px,) * 2, harmonics(rng, 4, .2), soft=1.2)
            else:
                m = np.clip(gaussian_blob(size, pos(), U(.8, 1.5) * px, U(2.5, 4), U(0, math.pi)) * 1.6, 0, 1)
            img = paint(img, m * F32(U(.5, 1)), red())
        if spec["exud"][1]:  # hard exudates: small waxy yellow flecks, often in clusters
            centre, k = pos(), _count(rng, spec["exud"])
            for i in range(k):
                p = pos() if rng.random() < .4 else (centre[0] + rng.normal(0, .08), centre[1] + rng.normal(0, .08))
                m = star_blob(size, p, (U(.6, 1.6) * px,) * 2, soft=1) * F32(U(.5, 1))
                img = paint(img, m, np.array([U(.85, 1), U(.75, .9), U(.25, .45)], F32))
        for _ in range(_count(rng, spec["cws"])):  # cotton-wool spots: fluffy pale patches
            m = star_blob(size, pos(), (U(2.5, 5) * px, U(2, 4) * px), harmonics(rng, 5, .3),
                          U(0, math.pi), soft=U(2, 3.5)) * F32(U(.3, .6))
            img = paint(img, m, np.array([U(.85, .98), U(.82, .92), U(.7, .85)], F32))
        if grade == 4:  # neovascular tufts: clusters of fine, tortuous new vessels
            segs = []
            for _ in range(_count(rng, (1, 3))):
                root = disc if rng.random() < .4 else pos()
                segs += vessel_segments(rng, size, root, U(0, 2 * math.pi), U(.7, 1.1) * size / 96,
                                        step=U(.012, .02), curl=U(.45, .7), taper=.97,
                                        branch_every=(2, 4), spread=(.6, 1.5), min_width_px=.3,
                                        max_depth=4, max_segments=int(rng.integers(40, 90)))
            img = paint(img, render_segments(size, segs) * F32(U(.6, 1)), red())
        return img

    return draw


def dr_fundus(rng: np.random.Generator, size: int, grade: int) -> np.ndarray:
    """Colour fundus (uint8 RGB) whose DR lesions follow `grade` (0-4)."""
    if grade not in DR_GRADES:
        raise ValueError(f"grade must be one of {DR_GRADES}, got {grade!r}")
    img = fundus(rng, size, lesions=_dr_lesions(int(grade))).astype(F32) / F32(255)
    # Extra camera variation (exposure, gamma) so intensity statistics carry no grade signal.
    img = np.clip(img * F32(rng.uniform(.75, 1.2)), 0, 1) ** F32(rng.uniform(.8, 1.25))
    return np.clip(img * F32(255) + F32(.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- brain MRI
def _tumour_value(rng: np.random.Generator, lut: dict) -> float:
    """Tumour signal: any level in the contrast's range that stands out from GM and WM."""
    for _ in range(50):
        t = float(rng.uniform(.05, 1.05))
        if min(abs(t - lut["gm"]), abs(t - lut["wm"])) >= .12:
            return t
    return t


def _tumour_shapes(rng: np.random.Generator, kind: str, hw: float, hh: float, lut: dict) -> list[Shape]:
    # Radii are twice generator version 1's: the Kaggle tumours are large, and at 64 px version 1's
    # pituitary tumours were 1-2 px across (benchmarks/README.md, SimCLR vs random on classification).
    U, H = rng.uniform, (lambda n, irr, kmin=2: harmonics(rng, n, irr, kmin))
    value = _tumour_value(rng, lut)
    if kind == "glioma":  # intra-axial, irregular, infiltrating the white matter
        a, rho = U(0, 2 * math.pi), U(.15, .65)
        c = (rho * .62 * hw * math.cos(a), rho * .62 * hh * math.sin(a))
        r = 2 * U(.07, .16)
        out = []
        if rng.random() < .5:  # peritumoral oedema
            out.append(Shape("edema", c, (r * U(1.4, 1.9), r * U(1.3, 1.8)), "edema", H(5, .3), U(0, 3), soft=2))
        out.append(Shape("tumour", c, (r, r * U(.75, 1.25)), value, H(6, U(.25, .4)), U(0, 3), soft=1.2))
        if rng.random() < .5:  # necrotic core
            out.append(Shape("tumour", c, (r * .45, r * .45), _tumour_value(rng, lut), H(4, .25), soft=1.5))
        return out
    if kind == "meningioma":  # extra-axial, round, on the inner skull surface (not the base)
        a = math.pi / 2 + U(math.radians(40), math.radians(320))  # y points down: pi/2 = bottom
        ex, ey = math.cos(a) * hw, math.sin(a) * hh  # head outline direction
        nx, ny = math.cos(a) / hw, math.sin(a) / hh  # outward normal of the ellipse
        norm = math.hypot(nx, ny)
        r = 2 * U(.07, .15)
        depth = r * U(.75, .95)
        c = (.87 * ex - nx / norm * depth, .87 * ey - ny / norm * depth)
        rot = math.atan2(ny, nx) + math.pi / 2  # long axis along the skull (broad dural base)
        out = [Shape("tumour", c, (r * U(1.0, 1.3), r), value, H(3, U(.02, .08)), rot, soft=1.2)]
        if rng.random() < .5:
            out.insert(0, Shape("edema", c, (r * U(1.5, 1.8), r * U(1.2, 1.5)), "edema", H(4, .2), rot, soft=2))
        return out
    if kind == "pituitary":  # small midline blob just above the skull base
        r = 2 * U(.035, .07)
        c = (U(-.03, .03), .87 * hh - r * U(1.0, 1.5))
        return [Shape("tumour", c, (r * U(.9, 1.3), r), value, H(3, .05), U(-.2, .2), soft=1.2)]
    return []


def brain_slice(rng: np.random.Generator, size: int, tumour: str) -> np.ndarray:
    """Axial brain MR slice (uint8 gray) with a tumour of the given type (or "no_tumor")."""
    if tumour not in TUMOURS:
        raise ValueError(f"tumour must be one of {TUMOURS}, got {tumour!r}")
    objs, frame, lut = _mr_scene(rng)  # random anatomy, pose and T1/T2/FLAIR contrast
    objs = [o for o in objs if o.name not in ("edema", "tumour")]  # the scene's own random tumour
    hw, hh = objs[0].r
    z = objs[0].z0 + rng.uniform(-.4, .4)
    objs += [o._replace(z0=z) for o in _tumour_shapes(rng, tumour, hw, hh, lut)]
    img = render_scene(size, objs, frame, z, 0.0, lut, None) * bias_field(rng, size, rng.uniform(.1, .35))
    img = rician_noise(rng, img, rng.uniform(.015, .05))
    img = cv2.GaussianBlur(img, (0, 0), .5)
    # Kaggle JPEGs are 8-bit renderings: random window top and gamma per image.
    top = float(np.percentile(img, rng.uniform(99.0, 99.9))) * rng.uniform(.9, 1.15)
    img = np.clip(img / F32(max(top, 1e-6)), 0, 1) ** F32(rng.uniform(.8, 1.25))
    return np.clip(img * F32(255) + F32(.5), 0, 255).astype(np.uint8)
