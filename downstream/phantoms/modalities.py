"""Phantom image families: one function per family, `f(rng, size, *, masks=None) -> ndarray`.

Every nuisance (position, size, rotation, contrast, counts, noise level) is drawn from `rng`.
Pass a dict as `masks` to receive the visible structures as float [0, 1] maps (used by tests
to measure that the anatomy is where it should be; the images do not depend on it).
Value conventions: `ct` int16 HU; `mr` int16 (arbitrary units, >= 0); `xray` uint16 12-bit
with bone/soft tissue bright (MONOCHROME2 view); `ultrasound` uint8 gray; `fundus`,
`dermoscopy`, `endoscopy`, `histology` uint8 RGB (H, W, 3). Volumes are (size, size, depth).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from medssl_bench.downstream.phantoms.primitives import (
    F32, Frame, Shape, bezier, bias_field, draw_curve, draw_ellipse, fractal_noise, gaussian_blob,
    gaussian_noise, grid, harmonics, lambert, paint, poisson_noise, random_frame, rayleigh_speckle,
    record, render_scene, render_segments, rician_noise, sector_field, smooth_noise, star_blob,
    star_field, superellipse, to_uint8, vessel_segments, vignette,
)


def _ct_scene(rng: np.random.Generator) -> tuple[list[Shape], Frame]:
    U, H = rng.uniform, (lambda n, irr, kmin=2: harmonics(rng, n, irr, kmin))
    thorax = bool(rng.random() < 0.5)
    bw, bh, fat, bh_harm = U(0.78, 0.93), U(0.55, 0.72), U(0.03, 0.1), H(4, 0.04)
    drift = lambda a: (float(rng.normal(0, a)), float(rng.normal(0, a)))  # noqa: E731
    objs = [Shape("fat", (0, 0.05), (bw, bh), U(-120, -80), bh_harm),
            Shape("soft", (0, 0.05), (bw - fat, bh - fat), U(30, 55), bh_harm)]
    sy = 0.05 + bh * 0.5
    organs: list[Shape] = []
    if thorax:
        for side in (-1, 1):
            organs.append(Shape("lung", (side * U(0.33, 0.42), U(-0.08, 0.05)),
                              (U(0.22, 0.3), U(0.3, 0.4)), U(-880, -780), H(4, 0.08),
                              side * U(0, 0.3), U(-1, 1), U(2, 4), drift(0.03)))
        objs += organs
        for _ in range(rng.integers(4, 14)):  # pulmonary vessels, seen end-on
            lung = organs[rng.integers(2)]
            at = (lung.c[0] + U(-.6, .6) * lung.r[0], lung.c[1] + U(-.6, .6) * lung.r[1])
            objs.append(Shape("lung", at, (U(.01, .022),) * 2, U(-650, -400), z0=U(-1, 1),
                              zr=U(0.5, 2), soft=1.5))
        objs.append(Shape("heart", (U(0.02, 0.12), U(-0.12, 0.0)), (U(0.18, 0.24), U(0.16, 0.21)),
                        U(30, 160), H(3, 0.06), U(-0.4, 0.4), U(-1, 1), U(2, 4), drift(0.05)))
        objs.append(Shape("vessel", (U(0.05, 0.15), sy - 0.2), (0.06, 0.06), U(40, 250), zr=9))
        for t in U(0, 2 * math.pi, rng.integers(6, 12)):  # rib cross-sections around the wall
            rib_c = (math.cos(t) * (bw - fat - 0.05), 0.05 + math.sin(t) * (bh - fat - 0.05))
            objs.append(Shape("bone", rib_c, (U(.025, .045), U(.035, .055)), U(500, 900), rot=t,
                            z0=U(-1, 1), zr=U(0.4, 0.9)))
        objs.append(Shape("bone", (0, 0.05 - bh + fat + 0.06), (0.07, 0.03), U(400, 700), zr=U(1, 3)))
    else:
        organs.append(Shape("liver", (-U(0.25, 0.4), U(-0.1, 0.05)), (U(0.3, 0.42), U(0.28, 0.4)),
                          U(50, 70), H(5, 0.12), U(-0.5, 0.5), U(-1, 1), U(2, 4), drift(0.04)))
        objs += organs
        objs.append(Shape("soft", (U(0.38, 0.5), U(0.0, 0.2)), (U(.1, .15), U(.14, .2)), U(40, 55),
                        H(3, 0.1), U(-1, 1), U(-1, 1), U(1.5, 3)))
        for side in (-1, 1):
            objs.append(Shape("kidney", (side * U(0.26, 0.34), sy - U(0.05, 0.12)), (U(.07, .1), U(.1, .14)),
                            U(120, 200), H(3, 0.08), side * U(0.2, 0.6), U(-.8, .8), U(1.2, 2.5)))
        for _ in range(rng.integers(1, 6)):
            objs.append(Shape("gas", (U(-0.3, 0.5), U(-0.4, 0.1)), (U(.03, .08),) * 2, U(-950, -850),
                            H(3, 0.15), z0=U(-1, 1), zr=U(0.6, 2)))
        objs.append(Shape("vessel", (U(0.0, 0.1), sy - 0.17), (0.045, 0.045), U(40, 250), zr=9))
    objs += [Shape("bone", (0, sy), (U(.1, .13), U(.09, .11)), U(900, 1100), H(3, 0.05), zr=9),
             Shape("bone", (0, sy), (U(.075, .09), U(.06, .075)), U(250, 400), zr=9),
             Shape("soft", (0, sy + 0.13), (.045, .04), 20, zr=9),
             Shape("bone", (0, sy + 0.2), (U(.025, .035), U(.05, .07)), U(600, 800), zr=9)]
    for _ in range(rng.choice(4, p=[0.3, 0.35, 0.2, 0.15])):
        o = organs[rng.integers(len(organs))]
        hu = U(-60, 60) if o.name == "lung" else o.value + U(-45, 80)
        objs.append(Shape("lesion", (o.c[0] + U(-.5, .5) * o.r[0], o.c[1] + U(-.5, .5) * o.r[1]),
                        (U(.025, .08), U(.025, .08)), hu, H(5, U(0.02, 0.25)), U(0, 3),
                        U(-1, 1), U(0.4, 1.2), soft=U(1, 2)))
    return objs, random_frame(rng, 0.08, (0.85, 1.05), 0.04)


def _ct_setup(rng: np.random.Generator, size: int):
    """One patient: anatomy, tissue texture and noise level shared by all its slices."""
    objs, frame = _ct_scene(rng)
    tex, sigma = fractal_noise(rng, size, 6, 2) * F32(rng.uniform(3, 9)), rng.uniform(6, 25)

    def render(z: float, masks: dict | None = None) -> np.ndarray:
        img = render_scene(size, objs, frame, z, -1000.0, {}, masks)
        img += ((img > -200) & (img < 300)) * tex
        img = gaussian_noise(rng, cv2.GaussianBlur(img, (0, 0), 0.6), sigma)
        return np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    return render


def ct(rng: np.random.Generator, size: int, *, masks: dict | None = None) -> np.ndarray:
    """Axial CT slice (thorax or abdomen), int16 Hounsfield-like units."""
    return _ct_setup(rng, size)(float(rng.uniform(-1, 1)), masks)


def ct_volume(rng: np.random.Generator, size: int, depth: int = 8) -> np.ndarray:
    """(size, size, depth) int16 CT slab; organs grow, shrink and drift smoothly along z."""
    render = _ct_setup(rng, size)
    return np.stack([render(float(z)) for z in np.linspace(-1, 1, depth) * (depth > 1)], axis=-1)


_MR_LUT = {
    "T1": dict(scalp=.9, skull=.06, csf=.15, gm=.55, wm=.8, edema=.45, rim=.95, necrosis=.12),
    "T2": dict(scalp=.55, skull=.05, csf=1., gm=.65, wm=.42, edema=.88, rim=.6, necrosis=.95),
    "FLAIR": dict(scalp=.5, skull=.05, csf=.08, gm=.62, wm=.45, edema=.95, rim=.8, necrosis=.2),
}


def _mr_scene(rng: np.random.Generator):
    U, H = rng.uniform, (lambda n, irr, kmin=2: harmonics(rng, n, irr, kmin))
    hw, hh, hz, head = U(0.62, 0.75), U(0.8, 0.9), U(2.5, 4), H(3, 0.03)
    z0 = U(-1, 1)
    shell = lambda name, f, harm, soft=1.0: Shape(name, (0, 0), (hw * f, hh * f), name, harm,  # noqa: E731
                                                z0=z0, zr=hz, soft=soft)
    objs = [shell("scalp", 1.0, head), shell("skull", U(.9, .94), head), shell("csf", .87, head),
            shell("gm", .82, H(8, U(.02, .045), 6)), shell("wm", U(.62, .7), H(12, U(.16, .26), 5))]
    objs.append(Shape("csf", (0, -0.05), (0.008, hh * 0.66), "csf", soft=0.7, zr=hz))  # falx
    vz, vr = U(-0.3, 0.3), U(1.2, 2.5)
    for side in (-1, 1):
        objs.append(Shape("csf", (side * U(.07, .11), U(-.12, 0)), (U(.04, .07), U(.14, .22)), "csf",
                        H(3, 0.1), side * U(0.1, 0.35), vz, vr))
    if rng.random() < 0.5:
        c, r, tz, tr = (U(-.35, .35), U(-.45, .4)), U(.12, .28), U(-1, 1), U(.6, 1.5)
        objs.append(Shape("edema", c, (r, r * U(.7, 1.3)), "edema", H(5, .25), U(0, 3), tz, tr, soft=2))
        rt = r * U(.35, .6)
        objs.append(Shape("tumour", c, (rt, rt), "rim", H(5, .2), U(0, 3), tz, tr * .8))
        if rng.random() < 0.6:
            objs.append(Shape("tumour", c, (rt * .55, rt * .55), "necrosis", H(4, .2), 0, tz, tr * .6))
    lut = {k: v * U(0.92, 1.08) for k, v in _MR_LUT[rng.choice(list(_MR_LUT))].items()}
    return objs, random_frame(rng, 0.1, (0.85, 1.05), 0.04), lut


def _mr_setup(rng: np.random.Generator, size: int):
    """One subject and scanner: anatomy, contrast, bias field and noise shared by all slices."""
    objs, frame, lut = _mr_scene(rng)
    bias = bias_field(rng, size, rng.uniform(0.1, 0.35))
    sigma, scale, z0 = rng.uniform(0.015, 0.05), F32(rng.uniform(800, 2500)), objs[0].z0

    def render(z: float, masks: dict | None = None) -> np.ndarray:
        img = render_scene(size, objs, frame, z + z0, 0.0, lut, masks) * bias
        img = rician_noise(rng, img, sigma) * scale
        return np.clip(np.rint(img), 0, 32767).astype(np.int16)
    return render


def mr(rng: np.random.Generator, size: int, *, masks: dict | None = None) -> np.ndarray:
    """Axial brain MR slice (T1, T2 or FLAIR-like contrast), int16, Rician noise + bias."""
    return _mr_setup(rng, size)(float(rng.uniform(-0.5, 0.5)), masks)


def mr_volume(rng: np.random.Generator, size: int, depth: int = 8) -> np.ndarray:
    """(size, size, depth) int16 brain MR slab, 1 mm-like slices through one head."""
    render = _mr_setup(rng, size)
    return np.stack([render(float(z)) for z in np.linspace(-0.6, 0.6, depth) * (depth > 1)], axis=-1)


# ----------------------------------------------------------------------------- projection X-ray
def xray(rng: np.random.Generator, size: int, *, masks: dict | None = None) -> np.ndarray:
    """PA chest radiograph, uint16 0..4095, attenuation bright (MONOCHROME2 convention)."""
    U, fr = rng.uniform, random_frame(rng, 0.05, (0.9, 1.05), 0.04)
    S = lambda c, r, n, rot=0.0: superellipse(size, fr.pt(*c), (r[0] * fr.scale, r[1] * fr.scale),  # noqa: E731
                                              n, rot + fr.angle, soft=1.5)
    img = np.full((size, size), U(0.03, 0.1), F32)
    body = np.maximum(S((0, 0.25), (U(.8, .92), U(1.0, 1.15)), U(3, 5)), S((0, -.85), (U(.16, .22), .3), 2.5))
    soft = U(0.5, 0.6)
    img = paint(img, body, soft)
    record(masks, "body", body)
    grad = F32(1.0) + F32(0.15) * grid(size)[0]
    for side in (-1, 1):
        lung = S((side * U(.3, .38), U(-.1, 0)), (U(.22, .3), U(.5, .6)), U(1.9, 2.6), side * U(0, .12))
        img -= lung * grad * F32(U(0.25, 0.35))
        record(masks, "lung", lung)
    img += S((0, 0), (0.06, 1.3), 4) * F32(0.04)  # spine shadow
    med = S((0, U(-.35, -.2)), (U(.09, .13), U(.5, .6)), 2.5)
    img = paint(img, med, soft + U(0.04, 0.09))
    record(masks, "mediastinum", med)
    heart = star_blob(size, fr.pt(U(.08, .18), U(.25, .35)), (U(.25, .33) * fr.scale, U(.18, .24) * fr.scale),
                      harmonics(rng, 3, 0.05), U(-.3, .3) + fr.angle, soft=2)
    img = paint(img, heart, soft + U(0.05, 0.1))
    record(masks, "heart", heart)
    bones = np.zeros((size, size), np.uint8)
    w = size / 2 * fr.scale
    for side in (-1, 1):
        for i in range(rng.integers(8, 11)):
            y0 = -0.62 + i * U(0.1, 0.12)
            ctrl = [(side * .06, y0), (side * .4, y0 - U(.12, .2)), (side * .75, y0 + .02),
                    (side * .8, y0 + U(.3, .45))]  # posterior rib: up from the spine, then down
            draw_curve(bones, fr.pts(bezier(np.array(ctrl), 16)), w * U(.028, .04), 200)
        ctrl = [(side * .08, -.62), (side * .3, -.72), (side * .5, -.72), (side * .74, U(-.85, -.75))]
        draw_curve(bones, fr.pts(bezier(np.array(ctrl), 16)), w * U(.04, .055), 255)
    img += bones.astype(F32) * F32(U(0.08, 0.14) / 255.0) * body
    if rng.random() < 0.3:
        c = fr.pt(rng.choice([-1, 1]) * U(.2, .45), U(-.4, .3))
        img += gaussian_blob(size, c, U(.015, .04) * fr.scale) * F32(U(0.06, 0.15))
    img = cv2.GaussianBlur(np.clip(img, 0, 1), (0, 0), 0.6) ** F32(U(0.8, 1.25))
    img = poisson_noise(rng, img, U(300, 3000))
    return np.clip(img * F32(U(3300, 4000)) + F32(U(0, 150)), 0, 4095).astype(np.uint16)


# ----------------------------------------------------------------------------- colour photographs
def fundus(rng: np.random.Generator, size: int, *, masks: dict | None = None,
           lesions=None) -> np.ndarray:
    """Colour fundus photograph: FOV disc, optic disc, macula, branching arteries/veins, lesions.

    `lesions`, if given, replaces the random lesion step: `lesions(rng, img, anatomy) -> img`
    paints on the float RGB image before noise, gain and the FOV mask; `anatomy` holds base
    (background colour), disc, disc_radius, macula (normalised), eye (+-1) and masks. Used by
    the DR-grading generator; None keeps the pretraining images exactly as they were.
    """
    U = rng.uniform
    yy, xx = grid(size)
    fov = star_blob(size, (U(-.02, .02), U(-.02, .02)), (U(.92, .99),) * 2, soft=1.5)
    base = np.array([U(.7, .9), U(.25, .42), U(.07, .18)], F32)
    img = base * (F32(1) + smooth_noise(rng, size, 3, 3) * F32(U(.03, .07)))
    img *= (F32(1) - F32(U(.2, .45)) * (xx * xx + yy * yy))[..., None]
    img *= (F32(1) + F32(.04) * fractal_noise(rng, size, 8, 2))[..., None]
    eye = float(rng.choice([-1, 1]))
    disc, rd = (eye * U(.35, .5), U(-.1, .1)), U(.08, .12)
    mac = (disc[0] - eye * U(.7, .85), disc[1] + U(.02, .1))
    img *= (F32(1) - F32(U(.2, .4)) * gaussian_blob(size, mac, U(.1, .16)))[..., None]
    dm = star_blob(size, disc, (rd, rd * U(1, 1.15)), harmonics(rng, 3, .04), soft=2)
    img = paint(img, dm, [U(.9, 1), U(.7, .85), U(.4, .6)])
    img = paint(img, gaussian_blob(size, disc, rd * .35) * F32(.6), [1, .93, .75])
    record(masks, "disc", dm)
    scale, arteries, veins = size / 96.0, [], []
    for vert in (-1, 1):
        for temporal in (True, False):
            lean = -eye * U(.3, .7) if temporal else eye * U(.5, 1.2)
            ang = math.atan2(vert * U(.6, 1.2), lean)
            bend = vert * eye * U(.03, .06) if temporal else float(rng.normal(0, .02))
            wv = U(1.8, 2.6) * scale * (1.0 if temporal else 0.75)
            root = (disc[0] + rng.normal(0, rd / 3), disc[1] + vert * rd * .3)
            kw = dict(step=.035, curl=.1, branch_every=(3, 7), max_depth=5)
            veins += vessel_segments(rng, size, root, ang, wv, bend=bend, **kw)
            arteries += vessel_segments(rng, size, root, ang + vert * .2, wv * .75, bend=bend, **kw)
    vm, am = render_segments(size, veins), render_segments(size, arteries)
    img = paint(img, vm * F32(.85), base * np.array([.55, .3, .45], F32))
    img = paint(img, am * F32(.8), base * np.array([.8, .55, .7], F32))
    record(masks, "vessels", np.maximum(vm, am))
    if lesions is not None:
        img = lesions(rng, img, dict(base=base, disc=disc, disc_radius=rd, macula=mac, eye=eye,
                                     masks=masks))
    elif rng.random() < 0.4:
        pos = lambda: (U(-.75, .75), U(-.75, .75))  # noqa: E731
        for _ in range(rng.integers(1, 9)):  # microaneurysms
            img = paint(img, gaussian_blob(size, pos(), U(.6, 1.2) * 2 / size), base * [.45, .15, .2])
        for _ in range(rng.integers(0, 7)):  # hard exudates
            img = paint(img, star_blob(size, pos(), (U(.6, 1.5) * 2 / size,) * 2, soft=1), [.95, .85, .35])
        for _ in range(rng.integers(0, 4)):  # blot haemorrhages
            img = paint(img, star_blob(size, pos(), (U(.02, .05),) * 2, harmonics(rng, 4, .2), soft=1.5),
                        base * [.5, .2, .3])
    if masks is not None:
        masks["fov"] = fov  # a container, not a layer: it hides nothing
    img = gaussian_noise(rng, img * F32(U(.85, 1.1)), U(.01, .03)) * fov[..., None]
    return to_uint8(img)


def dermoscopy(rng: np.random.Generator, size: int, *, masks: dict | None = None) -> np.ndarray:
    """Dermoscopy: skin, irregular multi-tone pigmented lesion with network, hairs, vignetting."""
    U = rng.uniform
    yy, xx = grid(size)
    skin = np.array([U(.78, .95), U(.55, .72), U(.45, .62)], F32) * F32(U(.65, 1))
    img = skin * (F32(1) + smooth_noise(rng, size, 3, 3) * F32(U(.02, .05)))
    img *= (F32(1) + F32(.015) * fractal_noise(rng, size, 10, 2))[..., None]
    c, r = (rng.normal(0, .15), rng.normal(0, .15)), U(.22, .55)
    rad, rot = (r * U(.8, 1.25), r * U(.8, 1.25)), U(0, math.pi)
    harm = harmonics(rng, 6, U(.04, .3))
    lesion = star_blob(size, c, rad, harm, rot, soft=U(1, 3) * size / 96)
    core = star_blob(size, c, (rad[0] * .55, rad[1] * .55), harm, rot, soft=6 * size / 96)
    t = np.clip(F32(.25) + F32(.3) * smooth_noise(rng, size, 4) + F32(.6) * core, 0, 1)[..., None]
    light = np.array([U(.55, .7), U(.35, .45), U(.22, .32)], F32)
    dark = np.array([U(.2, .35), U(.1, .2), U(.06, .14)], F32)
    col = light + t * (dark - light)
    ca, sa, period = F32(math.cos(rot)), F32(math.sin(rot)), U(5, 9) * 2 / size
    w1 = np.abs(np.cos(F32(math.pi / period) * (ca * xx + sa * yy) + F32(3) * smooth_noise(rng, size, 6)))
    w2 = np.abs(np.cos(F32(math.pi / period) * (ca * yy - sa * xx) + F32(3) * smooth_noise(rng, size, 6)))
    net = np.clip(F32(1) - np.minimum(w1, w2) / F32(.22), 0, 1)
    net *= np.clip(smooth_noise(rng, size, 3) + F32(.3), 0, 1) * F32(U(.1, .35))
    col *= (F32(1) - net)[..., None]
    if rng.random() < 0.2:  # blue-grey veil
        col = paint(col, gaussian_blob(size, c, r * .4) * F32(.6), [.35, .38, .45])
    for _ in range(rng.integers(0, 7)):  # dots / globules
        p = (c[0] + rng.normal(0, r * .4), c[1] + rng.normal(0, r * .4))
        col = paint(col, gaussian_blob(size, p, U(.8, 2) * 2 / size), dark * F32(.7))
    img = paint(img, lesion, 0) + lesion[..., None] * col
    record(masks, "lesion", lesion)
    hair = np.zeros((size, size), np.uint8)
    for _ in range(rng.choice(9, p=[.3, .15, .1, .1, .1, .08, .07, .05, .05])):
        p0, a, ln = rng.uniform(-1.1, 1.1, 2), U(0, 2 * math.pi), U(.6, 2.2)
        d, n = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
        ctrl = [p0, p0 + d * ln / 3 + n * U(-.2, .2), p0 + d * 2 * ln / 3 + n * U(-.2, .2), p0 + d * ln]
        draw_curve(hair, bezier(np.array(ctrl), 20), U(.7, 1.8) * size / 96)
    hm = hair.astype(F32) / F32(255)
    img = paint(img, hm * F32(.9), np.array([.12, .08, .06], F32) * F32(U(.5, 1.5)))
    record(masks, "hair", hm)
    ring = np.clip((np.hypot(xx, yy) - F32(U(.95, 1.35))) / F32(.15), 0, 1)
    img *= ((F32(1) - F32(.95) * ring) * vignette(size, U(.05, .25), 1.4))[..., None]
    return to_uint8(gaussian_noise(rng, img, U(.005, .02)))


def ultrasound(rng: np.random.Generator, size: int, *, masks: dict | None = None) -> np.ndarray:
    """B-mode ultrasound: sector or linear field, layered tissue, lesions, shadowing, speckle."""
    U = rng.uniform
    yy, xx = grid(size)
    px = size / 2.0
    if rng.random() < 0.65:  # curvilinear/phased probe: apex above the image
        ay = U(-1.35, -1.05)
        fan, depth = sector_field(size, ay, U(.45, .75), -ay - 1 + U(.05, .2), -ay + 1 - U(0, .1))
    else:  # linear probe
        fan, depth = sector_field(size, None, U(.7, .95), 0.0, 2.0)
    nl = int(rng.integers(3, 6))
    ys = np.sort(U(-.85, .75, nl))
    levels = U(.25, 1.0, nl + 1)
    levels[0] = U(.7, 1.0)  # skin
    echo = np.full((size, size), levels[0], F32)
    for i, y in enumerate(ys):
        b = F32(y) + F32(U(0, .08)) * np.sin(F32(U(1, 4)) * xx + F32(U(0, 6.3)))
        step = np.clip((yy - b) * F32(px / 1.5) + F32(.5), 0, 1)
        echo += step * (F32(levels[i + 1]) - echo)
        if rng.random() < 0.6:  # specular interface
            echo += F32(U(.3, .8)) * np.exp(-((yy - b) * F32(px)) ** 2)
        if rng.random() < 0.3:  # muscle striation
            echo *= F32(1) + F32(.25) * step * np.sin((yy - F32(U(-.3, .3)) * xx) * F32(U(40, 70)))
    echo *= F32(1) + F32(.15) * smooth_noise(rng, size, 5)
    lesion = np.zeros((size, size), F32)
    for _ in range(rng.choice(3, p=[.25, .5, .25])):
        kind, r = rng.integers(3), U(.08, .22)
        harm = (harmonics(rng, 3, U(0, .05)) if kind == 0 else harmonics(rng, 4, U(.12, .22), 3)
                if kind == 1 else harmonics(rng, 8, U(.15, .3), 8, decay=0))  # oval/lobulated/spiculated
        tall = U(.8, 1.4) if kind == 2 else U(.6, 1.0)
        m = star_blob(size, (U(-.4, .4), U(-.2, .5)), (r, r * tall), harm, U(-.3, .3), soft=U(1, 2.5))
        echo = paint(echo, m, U(.03, .3))
        behind = np.clip(np.maximum.accumulate(m, axis=0) - m, 0, 1)
        behind = cv2.GaussianBlur(behind, (0, 0), sigmaX=2, sigmaY=0.1)
        effect = U(*[(-.3, .8), (-.6, .3), (-.8, -.3)][kind])  # enhancement (+) or shadow (-)
        echo *= F32(1) + F32(effect) * behind
        lesion = np.maximum(lesion, m)
    gain = np.exp(-F32(U(.5, 1.5)) * depth) * (F32(1) + F32(U(.2, .8)) * depth)
    env = echo * gain * bias_field(rng, size, .1) * fan
    env *= F32(U(90, 130) / max(float(env.max()), 1e-6))
    if masks is not None:
        masks.update(fan=fan, lesion=lesion, echo=env)
    img = env * rayleigh_speckle(rng, (size, size), (U(.5, .8), U(.8, 1.5)))
    if rng.random() < 0.7:  # depth-scale ticks along the right edge, outside the image field
        ticks = np.zeros_like(img)
        for y in np.arange(-.8, 1, U(.15, .3)):
            cv2.circle(ticks, (size - 2, int((y + 1) * px)), max(1, size // 96), 200.0, -1)
        img += ticks * (fan < 0.05)
    return np.clip(img + F32(.5), 0, 255).astype(np.uint8)


def endoscopy(rng: np.random.Generator, size: int, *, masks: dict | None = None) -> np.ndarray:
    """Colonoscopy frame: shaded mucosal folds, lumen, specular highlights, 0-3 polyps."""
    U = rng.uniform
    yy, xx = grid(size)
    warp = smooth_noise(rng, size, 3)
    h = np.zeros((size, size), F32)
    for _ in range(3):
        f, a = U(3, 8), U(0, math.pi)
        h += F32(U(.5, 1) / f) * np.sin(F32(f) * (F32(math.cos(a)) * xx + F32(math.sin(a)) * yy)
                                         + F32(U(0, 6.3)) + F32(1.5) * warp)
    light = np.array([rng.normal(0, .3), rng.normal(0, .3), 1.0])
    light /= np.linalg.norm(light)

    base = np.array([U(.75, .95), U(.38, .55), U(.3, .45)], F32)
    sh = lambert(h, light)
    lumen = gaussian_blob(size, (U(-.6, .6), U(-.6, .6)), U(.15, .35))
    img = base * (F32(.35) + F32(.65) * sh * (F32(1) - F32(U(.6, .95)) * lumen))[..., None]
    img *= F32(1) + F32(.05) * fractal_noise(rng, size, 10, 2, channels=3)
    polyp = np.zeros((size, size), F32)
    for _ in range(rng.choice(4, p=[.25, .4, .2, .15])):
        c, r = (U(-.6, .6), U(-.6, .6)), U(.08, .28)
        res = star_field(size, c, (r, r * U(.8, 1.2)), harmonics(rng, 4, U(.03, .15)), U(0, 3))
        if res is None:
            continue
        sl, q = res
        dome = np.zeros((size, size), F32)
        dome[sl] = np.sqrt(np.clip(F32(1) - q * q, 0, 1)) * F32(r * U(.6, 1.2))
        m = np.zeros((size, size), F32)
        m[sl] = np.clip((F32(1) - q) * F32(r * size / 2 / 1.5) + F32(.5), 0, 1)
        pcol = base * np.array([U(1, 1.1), U(.8, 1), U(.85, 1.05)], F32)
        tex = F32(1) + F32(.12) * fractal_noise(rng, size, 16, 2)
        lit = (F32(.3) + F32(.7) * lambert(dome + h, light) * tex)[..., None]
        img = img + m[..., None] * (pcol * lit - img)
        hl = gaussian_blob(size, (c[0] - r * .35 * light[0], c[1] - r * .35 * light[1]), r * .12)
        img = paint(img, hl * m * F32(.9), [1, 1, 1])
        polyp = np.maximum(polyp, m)
    record(masks, "polyp", polyp)
    img *= vignette(size, U(.4, .75), U(1.1, 1.5))[..., None]
    cand = rng.uniform(-.9, .9, (24, 2))
    idx = np.clip(((cand + 1) * size / 2).astype(int), 0, size - 1)
    for i in np.argsort(-sh[idx[:, 1], idx[:, 0]])[: rng.integers(3, 13)]:  # saturated glints
        spec = gaussian_blob(size, cand[i], U(.008, .02), U(1, 3), U(0, 3))
        img = paint(img, np.clip(spec * F32(1.5), 0, 1), [1, 1, .97])
    if rng.random() < 0.5:
        img *= superellipse(size, (0, 0), (U(1.0, 1.25),) * 2, U(2, 8), soft=1.5)[..., None]
    return to_uint8(gaussian_noise(rng, img, U(.005, .02)))


_H_OD = np.array([0.65, 0.70, 0.29], F32) / F32(np.linalg.norm([0.65, 0.70, 0.29]))
_E_OD = np.array([0.07, 0.99, 0.11], F32) / F32(np.linalg.norm([0.07, 0.99, 0.11]))


def histology(rng: np.random.Generator, size: int, *, masks: dict | None = None) -> np.ndarray:
    """H&E section: fibrous eosin stroma, hematoxylin nuclei in clusters, glands with lumens."""
    U = rng.uniform
    yy, xx = grid(size)
    mag, ang = U(.8, 1.3), U(0, math.pi)
    fib = rng.standard_normal((size, size), dtype=F32)
    fib = cv2.GaussianBlur(fib, (0, 0), sigmaX=4 * size / 96, sigmaY=.6)  # fibres along x...
    rotm = cv2.getRotationMatrix2D((size / 2, size / 2), math.degrees(ang), 1.0)
    fib = cv2.warpAffine(fib, rotm, (size, size), borderMode=cv2.BORDER_REFLECT)  # ...then rotated
    fib = np.clip(F32(.5) + fib / (F32(2.5) * fib.std() + F32(1e-6)), 0, 1)
    ce = F32(U(.3, .6)) * (F32(.65) + F32(.35) * fib) * (F32(1) + F32(.15) * fractal_noise(rng, size, 6, 2))
    ce *= F32(1) - np.clip((smooth_noise(rng, size, 3) - F32(U(1, 2))) * F32(3), 0, 1)
    ch = ce * F32(.05)
    nuc = np.zeros((size, size), np.uint8)
    lumen = np.zeros((size, size), F32)
    half = size / 2.0

    def nucleus(x: float, y: float, a: float, b: float, deg: float, level: float) -> None:
        draw_ellipse(nuc, (x, y), (a, b), deg, level)

    for _ in range(rng.choice(4, p=[.3, .3, .25, .15])):
        c, r, harm = (U(-.7, .7), U(-.7, .7)), U(.1, .25) * mag, harmonics(rng, 4, U(.05, .2))
        res = star_field(size, c, (r * 1.45, r * 1.45), harm)
        if res is None:
            continue
        sl, q = res
        q = q * F32(1.45)
        epi = np.clip((F32(1.45) - q) * F32(4) + F32(.5), 0, 1)
        lum = np.clip((F32(1) - q) * F32(r * half / 1.2) + F32(.5), 0, 1)
        ce[sl] += epi * (F32(U(.5, .8)) - ce[sl])
        ch[sl] += epi * F32(.15)
        ce[sl] *= F32(1) - lum * F32(.95)
        ch[sl] *= F32(1) - lum * F32(.95)
        lumen[sl] = np.maximum(lumen[sl], lum)
        for t in np.arange(0, 2 * math.pi, .05 * mag / r):
            rt = 1 + sum(a * math.cos(k * t + p) for k, a, p in zip(*harm))
            x, y = c[0] + 1.2 * r * rt * math.cos(t), c[1] + 1.2 * r * rt * math.sin(t)
            nucleus(x, y, .026 * mag, .015 * mag, math.degrees(t), U(150, 230))
    for _ in range(rng.integers(1, 6)):  # clusters (tumour nests / lymphoid aggregates)
        c, spread, big = rng.uniform(-.8, .8, 2), U(.05, .2), U(.6, 1.4)
        for x, y in c + rng.normal(0, spread, (rng.integers(8, 40), 2)):
            a = U(.02, .04) * mag * big
            nucleus(x, y, a, a * U(.6, 1), U(0, 180), U(160, 255))
    for x, y in rng.uniform(-1, 1, (rng.integers(15, 50), 2)):  # spindle stromal nuclei
        nucleus(x, y, U(.025, .04) * mag, U(.008, .013) * mag, -math.degrees(ang) + U(-20, 20), U(140, 220))
    nm = nuc.astype(F32) / F32(255)
    ch += nm * F32(U(.8, 1.3)) * (F32(1) + F32(.2) * fractal_noise(rng, size, 16, 1))
    record(masks, "lumen", lumen)
    record(masks, "nuclei", nm)
    hv = _H_OD * (F32(1) + rng.normal(0, .05, 3).astype(F32))
    ev = _E_OD * (F32(1) + rng.normal(0, .05, 3).astype(F32))
    od = ch[..., None] * hv + ce[..., None] * ev
    img = np.exp(-od * F32(U(1.0, 1.6))) * F32(U(.92, 1))
    img = cv2.GaussianBlur(img, (0, 0), .5)
    return to_uint8(gaussian_noise(rng, img, U(.005, .015)))


FAMILY_GENERATORS = {
    "ct": ct, "mr": mr, "xray": xray, "fundus": fundus, "dermoscopy": dermoscopy,
    "ultrasound": ultrasound, "endoscopy": endoscopy, "histology": histology,
}
VOLUME_GENERATORS = {"ct": ct_volume, "mr": mr_volume}
