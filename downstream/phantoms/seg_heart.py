"""3D whole-heart phantom (CT or MR) for the synthetic MM-WHS 2017 download.

Torso of fat and soft tissue, two dark lungs with vessel cross-sections, spine, sternum and a
heart of seven overlapping ellipsoids and tubes labelled with MM-WHS codes: LV blood 500, LV
myocardium 205 (a thin shell), RV 600 (a crescent against the septum), LA 420 (with thin
pulmonary-vein stems), RA 550, ascending aorta 820 and pulmonary artery 850 (tubes leaving the
base upwards). Distractors carry blood signal but no label: the descending aorta beside the
spine and the superior vena cava above the RA. CT: Hounsfield-like values (contrast-enhanced;
right heart less opacified) + Gaussian noise; MR: bSSFP-like contrast (bright blood and fat)
+ bias field + Rician noise. Geometry conventions as downstream.phantoms.seg_brats.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from medssl_bench.downstream.phantoms.primitives import F32, gaussian_noise, rician_noise
from medssl_bench.downstream.phantoms.seg_brats import ellipsoid_q, grid3, paint, smooth_noise3, soft, tube_q

CODES = {"myocardium": 205, "la": 420, "lv": 500, "ra": 550, "rv": 600, "aorta": 820, "pa": 850}


def _lut(rng: np.random.Generator, modality: str) -> dict[str, float]:
    U = rng.uniform
    if modality == "ct":  # Hounsfield units, arterial-phase contrast
        left = U(250, 450)
        right = left + U(-150, 20)
        return dict(air=-1000, fat=U(-120, -80), soft=U(30, 55), lung=U(-880, -780), lungvessel=U(-600, -400),
                    bone=U(500, 900), marrow=U(200, 350), myo=U(80, 140), blood_l=left, blood_r=right)
    j = lambda v: v * U(.85, 1.15)  # noqa: E731  (relative bSSFP-like signal)
    return dict(air=.02, fat=j(.75), soft=j(.3), lung=j(.05), lungvessel=j(.25), bone=j(.12),
                marrow=j(.5), myo=j(.28), blood_l=j(.9), blood_r=j(.85))


def heart_case(rng: np.random.Generator, size: int, depth: int, modality: str):
    """One synthetic MM-WHS volume: (float32 image (H, W, D), int16 label with MM-WHS codes)."""
    if modality not in ("ct", "mr"):
        raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
    U = rng.uniform
    g, shape, px = grid3(size, depth, float(U(.35, .45))), (size, size, depth), size / 2.0
    lut = _lut(rng, modality)
    layers: list[tuple[str, np.ndarray, int | None]] = []  # (tissue, soft map, label code or None=unlabelled)

    def add(tissue, q, r, code=None):
        layers.append((tissue, soft(q, r * px), code))

    bw, bh, fat = U(.8, .92), U(.55, .68), U(.04, .1)
    torso_warp = smooth_noise3(rng, shape, 3)
    add("fat", ellipsoid_q(g, (0, .05, 0), (bw, bh, 50), 0, torso_warp, .02), bh)
    add("soft", ellipsoid_q(g, (0, .05, 0), (bw - fat, bh - fat, 50), 0, torso_warp, .02), bh)
    for side in (-1, 1):
        c = (side * U(.36, .44), U(-.05, .05), U(.1, .3))
        r = (U(.24, .3), U(.3, .38), U(1., 1.4))
        add("lung", ellipsoid_q(g, c, r, side * U(0, .3), smooth_noise3(rng, shape, 3), .06), r[0])
        for _ in range(int(rng.integers(2, 6))):  # pulmonary vessels, mostly seen end-on
            a = np.array([c[0] + U(-.6, .6) * r[0], c[1] + U(-.6, .6) * r[1], U(-.8, .8)])
            add("lungvessel", tube_q(g, [a, a + [U(-.1, .1), U(-.1, .1), U(.3, .6)]], U(.012, .025)), .02)
    sy = .05 + bh - U(.2, .26)
    add("bone", ellipsoid_q(g, (0, sy, 0), (U(.1, .13), U(.09, .11), 50)), .1)
    add("marrow", ellipsoid_q(g, (0, sy, 0), (U(.07, .09), U(.06, .075), 50)), .07)
    add("soft", ellipsoid_q(g, (0, sy + .15, 0), (.04, .035, 50)), .035)  # spinal canal
    add("bone", ellipsoid_q(g, (0, .05 - bh + fat + .05, 0), (U(.06, .09), .03, 50)), .03)  # sternum
    add("blood_l", ellipsoid_q(g, (U(.1, .18), sy - .16, 0), (U(.045, .06),) * 2 + (50,)), .05)  # desc. aorta

    # Heart: nominal offsets (x patient-left, y posterior, z superior) rotated and scaled per case.
    hc = np.array([U(.02, .12), U(-.1, 0.), U(-.15, .05)])
    rot, s = U(-.25, .25), U(1.3, 1.7)  # heart enlarged vs. a real FOV: learnable at 64 px
    cr, sr = np.cos(rot), np.sin(rot)
    at = lambda x, y, z: hc + s * np.array([cr * x - sr * y, sr * x + cr * y, z])  # noqa: E731
    J = lambda *r: tuple(v * s * U(.85, 1.15) for v in r)  # noqa: E731
    add("fat", ellipsoid_q(g, at(-.03, 0, 0), J(.26, .21, .2), rot, smooth_noise3(rng, shape, 3), .08), .21 * s)
    add("blood_r", tube_q(g, [at(-.17, .05, .05), at(-.14, .06, .6)], .045 * s), .045 * s)  # SVC
    add("blood_r", ellipsoid_q(g, at(-.17, .04, .04), J(.09, .09, .11), rot), .09 * s, CODES["ra"])
    add("blood_r", ellipsoid_q(g, at(-.02, -.12, -.08), J(.15, .07, .12), rot - .4), .07 * s, CODES["rv"])
    la_c = at(0, .13, .1)
    add("blood_l", ellipsoid_q(g, la_c, J(.1, .065, .09), rot + U(-.2, .2)), .065 * s, CODES["la"])
    for k in range(int(rng.integers(2, 5))):  # pulmonary-vein stems (thin, part of the LA label)
        side = -1 if k % 2 else 1
        end = la_c + s * np.array([side * U(.15, .22), U(.04, .1), U(-.06, .06)])
        r = U(.018, .028) * s
        add("blood_l", tube_q(g, [la_c, end], r), r, CODES["la"])
    r_pa = U(.04, .055) * s
    fork = at(.08, -.06, .3)
    add("blood_r", tube_q(g, [at(-.04, -.14, .0), at(.02, -.14, .18), fork], r_pa), r_pa, CODES["pa"])
    for end in (at(.22, .05, .32), at(-.15, .03, .36)):  # left and right pulmonary arteries
        add("blood_r", tube_q(g, [fork, end], r_pa * .7), r_pa * .7, CODES["pa"])
    r_ao = U(.045, .06) * s
    add("blood_l", tube_q(g, [at(0, 0, .02), at(-.03, -.04, .2), at(-.04, -.02, .4), at(-.02, .05, .6)], r_ao),
        r_ao, CODES["aorta"])
    lv_c, lv_r, lv_rot = at(.1, -.02, -.08), J(.12, .085, .13), rot - .6
    wall = U(.035, .05) * s
    add("myo", ellipsoid_q(g, lv_c, tuple(v + wall for v in lv_r), lv_rot), .1 * s, CODES["myocardium"])
    add("blood_l", ellipsoid_q(g, lv_c, lv_r, lv_rot), .085 * s, CODES["lv"])

    img = np.full(shape, lut["air"], F32)
    label = np.zeros(shape, np.int16)
    mixing = smooth_noise3(rng, shape, 5)  # inflow mixing artefacts in the blood pools
    for tissue, m, code in layers:
        img = paint(img, m, lut[tissue])
        label[m >= .5] = code or 0
    blood = np.maximum.reduce([m for t, m, _ in layers if t.startswith("blood")])
    img += blood * mixing * F32(U(10, 35) if modality == "ct" else U(.02, .06))
    img = ndimage.gaussian_filter(img, (.6, .6, .4))
    if modality == "ct":
        img = gaussian_noise(rng, img, float(U(10, 30)))
        return np.clip(np.rint(img), -1024, 3071).astype(np.int16), label
    img *= np.exp(F32(U(.2, .45)) * smooth_noise3(rng, shape, 2))  # surface-coil bias field
    img = rician_noise(rng, img, float(U(.02, .06))) * F32(U(200, 1500))
    return np.clip(np.rint(img), 0, 32767).astype(np.int16), label
