"""Breast-ultrasound phantom for the synthetic BUSI set (docs/datasets.md).

A linear-probe B-mode scan: skin line, subcutaneous fat with hypoechoic fat lobules and bright
Cooper's ligaments, textured fibroglandular layer, pectoral muscle, optional rib with acoustic
shadow, multiplicative Rayleigh speckle, depth gain and a bias field. The label lives in the
lesion shape (C.3): benign = smooth oval, wider than tall, posterior enhancement; malignant =
lobulated or spiculated, taller than wide, echogenic halo, posterior shadow. Size, position,
echogenicity and the nuisances are drawn independently of the class. Fat lobules and the rib are
hypoechoic distractors that are NOT lesions, and caliper crosses (as on real BUSI frames) mark
some lesions. `size` is the image height; widths vary (real BUSI frames are not square).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from medssl_bench.downstream.phantoms.primitives import (
    F32, bezier, bias_field, draw_curve, fractal_noise, grid, harmonics, paint, rayleigh_speckle,
    smooth_noise, star_blob,
)

KINDS = ("benign", "malignant", "normal")


def _lesion(rng: np.random.Generator, size: int, kind: str, avoid: list[tuple[float, float, float]]):
    """(soft map, binary mask, centre/radius, posterior effect, halo) of one lesion."""
    U = rng.uniform
    r = U(0.08, 0.32)  # small ones too: Dice on big blobs saturates (C.3 item 5)
    for _ in range(12):  # a second lesion keeps apart from the first
        c = (U(-0.55, 0.55), U(-0.3, 0.4))
        if all(math.hypot(c[0] - x, c[1] - y) > (r + q) * 1.1 for x, y, q in avoid):
            break
    if kind == "benign":
        radii, harm = (r, r * U(0.5, 0.85)), harmonics(rng, 3, U(0.0, 0.06))
        effect, halo, soft = U(0.1, 0.6), 0.0, U(0.8, 1.5)
    else:
        if rng.random() < 0.5:  # lobulated: few large bumps
            harm = harmonics(rng, 4, U(0.12, 0.22), 3)
        else:  # spiculated: many sharp spikes
            harm = harmonics(rng, 8, U(0.15, 0.3), 8, decay=0.0)
        radii = (r * U(0.7, 0.9), r * U(0.95, 1.4))  # taller than wide
        effect, halo, soft = U(-0.75, -0.3), U(0.15, 0.45), U(1.0, 2.5)
    rot = U(-0.3, 0.3)
    soft_map = star_blob(size, c, radii, harm, rot, soft)
    mask = (star_blob(size, c, radii, harm, rot, 0.05) >= 0.5).astype(np.uint8)
    return soft_map, mask, (c[0], c[1], max(radii)), effect, halo


def busi_scan(rng: np.random.Generator, size: int, kind: str, n_lesions: int = 1
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """One scan: (uint8 gray image (size, W), one uint8 0/1 mask per lesion). `kind` "normal"
    draws no lesion whatever `n_lesions` says."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    U = rng.uniform
    yy, xx = grid(size)
    px = size / 2.0
    # layered tissue, interfaces wavy; y grows with depth (probe at the top edge)
    skin, fat_end = U(-0.92, -0.85), U(-0.6, -0.3)
    gland_end, muscle = U(0.35, 0.6), U(0.55, 0.8)
    wave = lambda y: F32(y) + F32(U(0.02, 0.07)) * np.sin(F32(U(1, 4)) * xx + F32(U(0, 6.3)))  # noqa: E731
    step = lambda b: np.clip((yy - b) * F32(px / 1.5) + F32(0.5), 0, 1)  # noqa: E731
    echo = np.full((size, size), U(0.7, 1.0), F32)  # skin
    fat, gland = U(0.25, 0.45), U(0.55, 0.95)
    for b, level in ((wave(skin), fat), (wave(fat_end), gland), (wave(gland_end), U(0.25, 0.4)),
                     (wave(muscle), U(0.4, 0.6))):
        s = step(b)
        echo += s * (F32(level) - echo)
        echo += F32(U(0.2, 0.6)) * np.exp(-((yy - b) * F32(px / 1.2)) ** 2)  # specular interface
    gland_zone = step(wave(fat_end)) * (1 - step(wave(gland_end)))
    echo *= F32(1) + F32(U(0.15, 0.35)) * fractal_noise(rng, size, 4, 3) * gland_zone
    deep = step(wave(muscle))
    echo *= F32(1) + F32(0.2) * deep * np.sin((yy - F32(U(-0.2, 0.2)) * xx) * F32(U(40, 70)))
    for _ in range(int(rng.integers(2, 6))):  # hypoechoic fat lobules: lesion look-alikes
        c = (U(-0.9, 0.9), U(fat_end - 0.1, gland_end))
        echo = paint(echo, star_blob(size, c, (U(0.05, 0.14), U(0.03, 0.07)), harmonics(rng, 3, 0.05),
                                     U(-0.3, 0.3), 2.0), U(0.15, 0.35))
    canvas = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 6))):  # Cooper's ligaments: thin bright arcs
        x0, y0 = U(-1, 1), U(skin + 0.1, fat_end + 0.2)
        ctrl = np.array([[x0, y0], [x0 + U(-.3, .3), y0 + U(.05, .2)], [x0 + U(-.4, .4), y0 + U(.1, .3)],
                         [x0 + U(-.5, .5), y0 + U(.15, .4)]])
        draw_curve(canvas, bezier(ctrl), U(0.6, 1.6), 255)
    echo = np.maximum(echo, canvas.astype(F32) / F32(255) * F32(U(0.7, 1.1)))
    masks, soft, placed = [], np.zeros((size, size), F32), []
    for _ in range(0 if kind == "normal" else max(1, int(n_lesions))):
        m, binary, where, effect, halo = _lesion(rng, size, kind, placed)
        placed.append(where)
        if halo:  # echogenic rim of an infiltrating margin
            ring = cv2.GaussianBlur(m, (0, 0), max(1.0, size / 60)) - m
            echo += F32(halo) * np.clip(ring, 0, 1) * F32(2)
        inner = U(0.03, 0.28) * (F32(1) + F32(U(0, 0.3)) * smooth_noise(rng, size, 6))
        echo += m * (inner - echo)
        behind = np.clip(np.maximum.accumulate(m, axis=0) - m, 0, 1)  # acoustic column below
        behind = cv2.GaussianBlur(behind, (0, 0), sigmaX=max(1.0, size / 50), sigmaY=0.1)
        echo *= F32(1) + F32(effect) * behind
        soft = np.maximum(soft, m)
        masks.append(binary)
    if rng.random() < 0.35:  # rib: dark oval at depth with a strong shadow (a distractor)
        c = (U(-0.7, 0.7), U(0.75, 0.9))
        rib = star_blob(size, c, (U(0.12, 0.2), U(0.05, 0.08)), soft=2.0)
        echo = paint(echo, rib, 0.05)
        echo *= F32(1) - F32(0.8) * np.clip(np.maximum.accumulate(rib, axis=0) - rib, 0, 1)
    depth = (yy + F32(1)) / F32(2)
    gain = np.exp(-F32(U(0.4, 1.4)) * depth) * (F32(1) + F32(U(0.2, 0.8)) * depth)
    env = np.clip(echo, 0, None) * gain * bias_field(rng, size, U(0.05, 0.2))
    env *= F32(U(90, 140) / max(float(env.max()), 1e-6))
    img = env * rayleigh_speckle(rng, (size, size), (U(0.5, 0.9), U(0.8, 1.6)))
    img = cv2.GaussianBlur(img, (0, 0), 0.5)
    for x, y, r in placed if rng.random() < 0.4 else ():  # caliper crosses at the lesion ends
        for sx in (-1, 1):
            cx, cy = int((x + sx * r + 1) * px), int((y + 1) * px)
            arm = max(2, size // 40)
            cv2.line(img, (cx - arm, cy), (cx + arm, cy), 230.0, 1)
            cv2.line(img, (cx, cy - arm), (cx, cy + arm), 230.0, 1)
    out = np.clip(img + F32(0.5), 0, 255).astype(np.uint8)
    width = size - int(rng.integers(0, size // 5 + 1))  # real frames vary in width
    x0 = int(rng.integers(0, size - width + 1))
    return out[:, x0:x0 + width].copy(), [m[:, x0:x0 + width].copy() for m in masks]
