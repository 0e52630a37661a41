"""T2-weighted pelvic MR phantom for the synthetic multi-site prostate set (docs/datasets.md).

One subject is a 3D scene of star-shaped structures (primitives.render_scene): body fat, pelvic
muscles (obturator internus, gluteal, levator), pubic bones and femoral heads (cortex + marrow),
rectum (wall + lumen or endorectal-coil balloon), bladder in the upper slices, seminal vesicles
above the prostate, a bright periprostatic venous ring and the prostate itself: a deformed
ellipsoid with a bright peripheral zone, a darker central gland and sometimes a dark focal lesion,
varying in size, position, tilt and extent along z. Bones, bladder, vesicles and the venous ring
are distractors next to the target.

What makes the sites out-of-distribution for one another (the point of the task) is the scanner,
drawn per SITE: matrix size and field of view, slice count, tissue contrast, gamma, noise level,
bias-field strength, an endorectal-coil intensity fall-off, in-plane blur, stored orientation and
data type. `SITE_STYLES` holds those settings.

Labels follow the real release (Liu et al., SAML): 1 prostate, except at the sites that come from
NCI-ISBI 2013 (`ZONAL_SITES`: RUNMC, BMC), whose labels are zonal - 1 central gland, 2 peripheral
zone (a lesion in it included) - so the adapter's 2 -> 1 remap is exercised.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

from medssl_bench.downstream.phantoms.primitives import (
    F32, Shape, bias_field, gaussian_blob, harmonics, random_frame, render_scene, rician_noise,
)


class SiteStyle(NamedTuple):
    side: float  # in-plane matrix as a fraction of the requested size
    depth: tuple[int, int]  # slices per volume (inclusive range)
    fov: float  # anatomy scale in the field of view (larger = zoomed in)
    thickness: float  # slice thickness, mm
    noise: float  # Rician sigma relative to the brightest tissue
    bias: float  # smooth bias-field strength
    erc: float  # endorectal-coil gain near the rectum (0 = body coil only)
    blur: float  # in-plane blur, pixels (lower effective resolution)
    gamma: float  # intensity response
    contrast: dict  # tissue -> multiplier on the base T2 contrast
    flip: bool  # stored LPS (affine with negative x/y axes) instead of RAS
    dtype: str  # on-disk image data type
    scale: float  # on-disk intensity range


SITE_STYLES = {
    "RUNMC": SiteStyle(1.0, (14, 16), 0.95, 3.6, 0.03, 0.12, 0.0, 0.0, 1.0, {}, False, "int16", 900),
    "BMC": SiteStyle(1.0, (12, 16), 1.05, 4.0, 0.035, 0.15, 1.2, 0.3, 1.0, {}, False, "int16", 1500),
    "I2CVB": SiteStyle(1.0, (14, 16), 1.2, 3.0, 0.02, 0.1, 0.0, 0.0, 0.8,
                       {"fat": 0.8, "pz": 1.1}, False, "float32", 1.0),
    "UCL": SiteStyle(0.875, (12, 14), 0.9, 3.6, 0.05, 0.2, 0.0, 0.4, 1.2,
                     {"cg": 1.2, "muscle": 1.3}, True, "int16", 600),
    "BIDMC": SiteStyle(0.875, (12, 16), 1.1, 3.0, 0.045, 0.25, 1.8, 0.5, 1.3,
                       {"pz": 0.75, "fat": 1.1, "cg": 1.25}, True, "int16", 3000),
    "HK": SiteStyle(0.75, (12, 14), 0.85, 3.3, 0.05, 0.18, 0.0, 0.7, 0.7,
                    {"pz": 0.8, "fat": 0.7, "plexus": 0.7}, False, "float32", 250.0),
}
ZONAL_SITES = ("RUNMC", "BMC")  # NCI-ISBI 2013 sites: 1 central gland, 2 peripheral zone
_T2 = dict(fat=0.85, muscle=0.22, cortex=0.04, marrow=0.6, urine=1.0, wall=0.35, lumen=0.08,
           pz=0.72, cg=0.34, lesion=0.15, sv=0.82, plexus=0.8, vessel=0.05)


def _scene(rng: np.random.Generator, style: SiteStyle):
    """One subject: list of Shapes (painted in order), the frame and the subject's tissue LUT."""
    U, H = rng.uniform, (lambda n, irr, kmin=2: harmonics(rng, n, irr, kmin))
    inf = math.inf
    bw, bh = U(0.8, 0.92), U(0.55, 0.68)
    objs = [Shape("body", (0, 0.05), (bw, bh), "fat", H(4, 0.04), zr=inf)]
    for side in (-1, 1):
        objs += [Shape("muscle", (side * U(.5, .6), U(.35, .45)), (U(.2, .28), U(.15, .2)), "muscle",
                       H(3, .08), side * U(.2, .6), zr=inf),  # gluteus
                 Shape("muscle", (side * U(.3, .36), U(-.02, .1)), (U(.05, .08), U(.16, .22)), "muscle",
                       H(3, .05), side * U(0, .3), zr=inf),  # obturator internus
                 Shape("bone", (side * U(.5, .58), U(-.05, .05)), (U(.13, .17),) * 2, "cortex",
                       z0=U(.8, 1.1), zr=U(.6, .9)),  # femoral head
                 Shape("bone", (side * U(.07, .1), U(-.38, -.3)), (U(.05, .07), U(.08, .11)), "cortex",
                       rot=side * .3, z0=U(-.6, -.3), zr=U(.6, .9)),  # pubic bone
                 Shape("vessel", (side * U(.25, .35), U(-.3, -.2)), (.03, .03), "vessel", zr=inf)]
    for o in [o for o in objs if o.name == "bone"]:  # marrow inside each bone
        objs.append(o._replace(r=(o.r[0] * .7, o.r[1] * .7), value="marrow"))
    # prostate: size, position, tilt and z extent vary between subjects
    pc, pr = (U(-.06, .06), U(-.1, .04)), (U(.15, .28), U(.12, .21))
    pz0, pzr, rot, drift = U(-.35, .15), U(.55, .9), U(-.25, .25), (U(-.05, .05), U(-.1, .05))
    harm = H(4, U(0.03, 0.1))
    rect_y = pc[1] + pr[1] + U(.1, .16)
    lumen = (U(.07, .1), U(.05, .07)) if style.erc else (U(.02, .05), U(.015, .04))
    objs += [Shape("muscle", (pc[0], rect_y - .02), (pr[0] * 1.35, pr[1] * 1.5), "muscle", H(3, .05),
                   z0=pz0 - .2, zr=pzr * .9),  # levator ani sling, under the rectum
             Shape("rectum", (pc[0], rect_y), (lumen[0] + .04, lumen[1] + .035), "wall", H(3, .08), zr=inf),
             Shape("rectum", (pc[0], rect_y), lumen, "lumen", H(3, .05), zr=inf),
             Shape("bladder", (pc[0], pc[1] - U(0, .08)), (U(.2, .32), U(.16, .26)), "urine", H(4, .08),
                   z0=pz0 + pzr + U(.3, .6), zr=U(.5, .8)),
             Shape("plexus", pc, (pr[0] * 1.15, pr[1] * 1.15), "plexus", harm, rot, pz0, pzr * 1.05, drift),
             Shape("prostate", pc, pr, "pz", harm, rot, pz0, pzr, drift),
             Shape("prostate", (pc[0], pc[1] - pr[1] * .25), (pr[0] * .7, pr[1] * .6), "cg", H(3, .08), rot,
                   pz0 + pzr * .15, pzr * .8, drift, soft=2.0)]
    if rng.random() < 0.4:  # focal lesion in the peripheral zone: dark, still prostate
        a = U(0.3 * math.pi, 0.7 * math.pi)
        at = (pc[0] + .65 * pr[0] * math.cos(a), pc[1] + .65 * pr[1] * math.sin(a))
        objs.append(Shape("prostate", at, (U(.03, .06),) * 2, "lesion", H(4, .2), 0, pz0 + U(-.3, .3) * pzr,
                          pzr * U(.2, .4), drift, soft=2.0))
    for side in (-1, 1):  # seminal vesicles: bright, above and behind the gland
        objs.append(Shape("sv", (pc[0] + side * pr[0] * U(.4, .7), pc[1] + pr[1] * U(.3, .7)),
                          (pr[0] * U(.45, .7), pr[1] * U(.3, .45)), "sv", H(4, .15), side * U(.2, .6),
                          pz0 + pzr * U(.85, 1.1), U(.25, .45)))
    lut = {k: v * style.contrast.get(k, 1.0) * U(0.9, 1.1) for k, v in _T2.items()}
    frame = random_frame(rng, 0.08, (style.fov * 0.9, style.fov * 1.1), 0.04)
    return objs, frame, lut, (pc[0], rect_y)


def prostate_volume(rng: np.random.Generator, size: int, site: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    """One subject scanned at `site`: (image float32 (H, W, D) in the orientation that
    canonical_seg.read_nifti returns - row 0 anterior, column 0 the patient's left, slice 0
    inferior -, label uint8 (H, W, D): 0/1, or 0/1/2 (central gland / peripheral zone) at the
    `ZONAL_SITES`, voxel spacing (mm)). The caller stores both with the site's affine."""
    style = SITE_STYLES[site]
    side = max(32, int(round(size * style.side / 2)) * 2)
    depth = int(rng.integers(style.depth[0], style.depth[1] + 1))
    objs, frame, lut, rectum = _scene(rng, style)
    zonal = site in ZONAL_SITES
    central = [o for o in objs if o.value == "cg"]  # the central gland, drawn alone for the zones
    field = bias_field(rng, side, style.bias)
    if style.erc:  # surface-coil fall-off around the endorectal coil
        c = frame.pt(*rectum)
        field = field * (F32(1) + F32(style.erc * rng.uniform(0.8, 1.2)) * gaussian_blob(side, c, 0.22))
    sigma = style.noise * rng.uniform(0.8, 1.25)
    image = np.empty((side, side, depth), np.float32)
    label = np.empty((side, side, depth), np.uint8)
    for k, z in enumerate(np.linspace(-1.0, 1.0, depth)):
        masks: dict = {}
        img = render_scene(side, objs, frame, float(z), 0.0, lut, masks) * field
        if style.blur:
            img = cv2.GaussianBlur(img, (0, 0), style.blur)
        image[:, :, k] = rician_noise(rng, img, sigma)
        label[:, :, k] = masks.get("prostate", np.zeros((side, side), F32)) >= 0.5
        if zonal:  # whole gland unchanged; outside the central gland it is peripheral zone (2)
            cg: dict = {}
            render_scene(side, central, frame, float(z), 0.0, lut, cg)
            inside = cg.get("prostate", np.zeros((side, side), F32)) >= 0.5
            label[:, :, k][(label[:, :, k] == 1) & ~inside] = 2
    image = np.clip(image / F32(np.percentile(image, 99.5) + 1e-6), 0, None) ** F32(style.gamma)
    fov_mm = 200.0 / frame.scale
    return image * F32(style.scale), label, (fov_mm / side, fov_mm / side, style.thickness)
