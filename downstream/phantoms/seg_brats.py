"""3D brain-tumour phantom for the synthetic BraTS download, plus the small 3D toolkit (grid,
smooth noise, deformed ellipsoids, tubes, NIfTI bytes) that the heart phantom reuses.

Volumes are (H, W, D) = (rows, columns, axial slices) in display orientation: x to the right
(columns), y downwards (rows), z upwards (slice index). Coordinates are normalised like
primitives.py: the in-plane field of view spans [-1, 1]; z uses the same unit (isotropic
distances), the slab covering z in [-z_half, z_half]. Soft maps are 0.5 exactly on a shape's
surface, and labels are taken where the (composited) soft map is >= 0.5, so every label voxel
is a voxel the image shows as that tissue.
"""
from __future__ import annotations

import functools
import gzip

import cv2
import numpy as np
from scipy import ndimage

from medssl_bench.downstream.phantoms.primitives import F32, rician_noise

# Relative signal per tissue and contrast (FLAIR: edema bright, CSF dark; T1ce: enhancing rim
# bright; T2: CSF and edema bright; T1: WM > GM). "wmh" = small white-matter hyperintensities:
# FLAIR-bright spots that are NOT tumour (a distractor a model must learn to ignore).
CONTRASTS = {
    "flair": dict(scalp=.5, skull=.05, csf=.08, gm=.62, wm=.45, wmh=.85, edema=.95, rim=.8, nonenh=.75, necrosis=.2),
    "t1": dict(scalp=.9, skull=.06, csf=.15, gm=.55, wm=.8, wmh=.6, edema=.45, rim=.5, nonenh=.4, necrosis=.12),
    "t1ce": dict(scalp=.9, skull=.06, csf=.15, gm=.55, wm=.8, wmh=.6, edema=.45, rim=.98, nonenh=.42, necrosis=.12),
    "t2": dict(scalp=.55, skull=.05, csf=1., gm=.65, wm=.42, wmh=.8, edema=.88, rim=.6, nonenh=.8, necrosis=.95),
}
SEG_CODES = {"necrosis": 1, "edema": 2, "enhancing": 4}  # BraTS 2018/2021 label values


# ----------------------------------------------------------------------------- 3D toolkit
@functools.lru_cache(maxsize=8)
def grid3(size: int, depth: int, z_half: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read-only (xx, yy, zz) voxel-centre coordinates, each of shape (size, size, depth)."""
    c = (np.arange(size, dtype=F32) + F32(0.5)) * F32(2.0 / size) - F32(1.0)
    z = np.linspace(-z_half, z_half, depth, dtype=F32) if depth > 1 else np.zeros(1, F32)
    yy, xx, zz = np.meshgrid(c, c, z, indexing="ij")
    for a in (xx, yy, zz):
        a.setflags(write=False)
    return xx, yy, zz


def smooth_noise3(rng: np.random.Generator, shape: tuple[int, int, int], cells: int = 3) -> np.ndarray:
    """Unit-std smooth random field: a coarse random lattice, bicubically upsampled in-plane,
    then along z (separable OpenCV resizes: ~50x faster than a 3D spline zoom)."""
    h, w, d = shape
    lattice = rng.standard_normal((cells + 1, cells + 1, max(2, cells // 2 + 1))).astype(F32)
    plane = cv2.resize(lattice, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h * w, -1)
    field = cv2.resize(plane, (d, h * w), interpolation=cv2.INTER_CUBIC).reshape(h, w, d)
    field -= field.mean()
    return field / F32(field.std() + 1e-6)


def ellipsoid_q(g, center, radii, angle: float = 0.0, warp: np.ndarray | None = None,
                amp: float = 0.0) -> np.ndarray:
    """Normalised radius q of a (deformed) ellipsoid, q < 1 inside. `angle` rotates it about z;
    `warp` (a smooth unit field) times `amp` modulates the local radius (lobes, fingers)."""
    xx, yy, zz = g
    dx, dy, dz = xx - F32(center[0]), yy - F32(center[1]), zz - F32(center[2])
    c, s = F32(np.cos(angle)), F32(np.sin(angle))
    u = (c * dx + s * dy) / F32(radii[0])
    v = (c * dy - s * dx) / F32(radii[1])
    q = np.sqrt(u * u + v * v + (dz / F32(radii[2])) ** 2)
    if warp is not None and amp:
        q /= np.maximum(F32(1.0) + F32(amp) * warp, F32(0.2))
    return q


def tube_q(g, points, radius: float) -> np.ndarray:
    """Distance to a polyline (points (k, 3) in x, y, z) divided by `radius`: q < 1 inside."""
    xx, yy, zz = g
    best = np.full(xx.shape, np.inf, F32)
    pts = np.asarray(points, dtype=np.float32)
    for a, b in zip(pts[:-1], pts[1:]):
        ab = b - a
        t = ((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1] + (zz - a[2]) * ab[2]) / F32(max(float(ab @ ab), 1e-9))
        t = np.clip(t, 0, 1)
        d2 = (xx - a[0] - t * ab[0]) ** 2 + (yy - a[1] - t * ab[1]) ** 2 + (zz - a[2] - t * ab[2]) ** 2
        np.minimum(best, d2, out=best)
    return np.sqrt(best) / F32(radius)


def soft(q: np.ndarray, radius_px: float) -> np.ndarray:
    """Antialiased inside map from q (0.5 on the surface, ~1 voxel transition)."""
    return np.clip((F32(1.0) - q) * F32(max(radius_px, 0.5)) + F32(0.5), 0, 1)


def paint(img: np.ndarray, m: np.ndarray, value: float) -> np.ndarray:
    return img + m * (F32(value) - img)


def nifti_gz_bytes(vol: np.ndarray, spacing: tuple[float, float, float], dtype) -> bytes:
    """A display-orientation (H, W, D) volume as .nii.gz bytes with an LPS-like affine
    diag(-sx, -sy, sz) (as BraTS/MM-WHS files). canonical_seg.read_nifti turns it back into
    exactly `vol`: reorienting to RAS flips both in-plane axes, then it rotates by +90 degrees,
    so the stored array is `vol` rotated by +90 degrees. gzip without a timestamp: same bytes
    for the same volume."""
    data = np.ascontiguousarray(np.rot90(np.asarray(vol).astype(dtype), 1, axes=(0, 1)))
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(data.shape) - 1) / 2.0)
    return nifti_gz(data, affine)


def nifti_gz(data: np.ndarray, affine: np.ndarray) -> bytes:
    """`data` as stored voxels with `affine`, as .nii.gz bytes; gzip without a timestamp (nibabel's
    own writer stamps the time), so the same volume gives the same bytes."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def depth_range(size: int) -> tuple[int, int]:
    """Slices per synthetic volume: 16-24 at the default in-plane size 64, scaled with it."""
    return max(6, round(size / 4)), max(8, round(size * 3 / 8))


# ----------------------------------------------------------------------------- brain tumour
def _inside_brain(q_brain: np.ndarray, g, c) -> bool:
    xx, yy, zz = g
    i = np.unravel_index(np.argmin((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2), xx.shape)
    return bool(q_brain[i] < 0.75)


def _lesion(rng, g, shape, px, brain, centre, r_edema, enhancing: bool, necrotic: bool):
    """(edema, core, necrosis) soft maps of one tumour: a finger-like edema halo around a
    core (enhancing rim for high grade, non-enhancing otherwise) with an optional necrotic centre."""
    U = rng.uniform
    stretch = (r_edema * U(.8, 1.2), r_edema * U(.8, 1.2), r_edema * U(.7, 1.1))
    edema = soft(ellipsoid_q(g, centre, stretch, U(0, np.pi), smooth_noise3(rng, shape, 5), U(.2, .38)),
                 r_edema * px) * brain
    r_core = r_edema * U(.35, .65)
    core = soft(ellipsoid_q(g, centre, (r_core, r_core * U(.75, 1.25), r_core * U(.75, 1.1)), U(0, np.pi),
                            smooth_noise3(rng, shape, 4), U(.1, .22)), r_core * px) * brain
    if not enhancing:  # low grade: the core may hold a small enhancing focus only
        necrosis = np.zeros_like(core)
        if necrotic:
            necrosis = core * soft(ellipsoid_q(g, centre, (r_core * .5,) * 3), r_core * .5 * px)
        return edema, core, necrosis
    r_nec = r_core * U(.4, .7)
    necrosis = (soft(ellipsoid_q(g, centre, (r_nec, r_nec * U(.8, 1.2), r_nec), U(0, np.pi),
                                 smooth_noise3(rng, shape, 3), .15), r_nec * px) if necrotic
                else np.zeros_like(core)) * core
    return edema, core, necrosis


def brats_case(rng: np.random.Generator, size: int, depth: int, high_grade: bool):
    """One synthetic BraTS case: ({"flair", "t1", "t1ce", "t2"} -> float32 volumes,
    int16 seg with codes {0, 1 necrotic/non-enhancing core, 2 edema, 4 enhancing})."""
    U = rng.uniform
    z_half = float(U(.45, .55))
    g, shape, px = grid3(size, depth, z_half), (size, size, depth), size / 2.0
    hw, hh, hz = U(.62, .75), U(.78, .88), U(.85, 1.0)
    head_c = (U(-.03, .03), U(-.04, .04), U(-.15, .15))
    head_warp = smooth_noise3(rng, shape, 2)

    def shell(f: float, warp: np.ndarray = head_warp, amp: float = .03) -> np.ndarray:
        """q of the head outline scaled by f (scalp, skull, CSF, cortex, white matter)."""
        return ellipsoid_q(g, head_c, (hw * f, hh * f, hz * f), 0, warp, amp)

    layers = [("scalp", soft(shell(1.0), hw * px)), ("skull", soft(shell(U(.9, .94)), hw * px)),
              ("csf", soft(shell(.87), hw * px))]
    q_gm = shell(.82, smooth_noise3(rng, shape, 7), U(.02, .05))
    brain = soft(q_gm, hw * px)
    layers += [("gm", brain), ("wm", soft(shell(U(.62, .7), smooth_noise3(rng, shape, 6), U(.14, .24)), hw * px))]
    ang, vr = U(-.15, .15), U(.04, .07)
    for side in (-1, 1):  # lateral ventricles: CSF, dark on FLAIR, bright on T2
        c = (head_c[0] + side * U(.07, .11), head_c[1] + U(-.12, 0), head_c[2] + U(-.1, .15))
        layers.append(("csf", soft(ellipsoid_q(g, c, (vr, U(.14, .22), U(.12, .2)), ang + side * U(.1, .3)),
                                   vr * px)))
    xx, yy, _ = g
    falx = np.clip((F32(.012) - np.abs(xx - F32(head_c[0]))) * F32(px) + F32(.5), 0, 1) * (yy < F32(.55 * hh))
    layers.append(("csf", falx * brain))  # thin midline CSF sheet
    for _ in range(int(rng.integers(0, 4))):  # white-matter hyperintensities (not tumour)
        r = U(.025, .05)
        c = (head_c[0] + U(-.35, .35) * hw, head_c[1] + U(-.4, .4) * hh, U(-z_half, z_half))
        layers.append(("wmh", soft(ellipsoid_q(g, c, (r, r * U(.7, 1.4), r)), r * px) * brain))
    lesions = []
    for k in range(1 + int(rng.random() < .2)):  # sometimes a second, satellite lesion
        for _ in range(30):
            c = (head_c[0] + U(-.5, .5) * hw, head_c[1] + U(-.55, .5) * hh, U(-.6, .6) * z_half)
            if _inside_brain(q_gm, g, c):
                break
        r_e = U(.16, .36) if high_grade else U(.12, .3)
        if k:
            r_e *= U(.35, .6)
        enhancing = high_grade or rng.random() < .3
        necrotic = rng.random() < (.85 if high_grade else .25)
        lesions.append((enhancing, *_lesion(rng, g, shape, px, brain, c, r_e, enhancing, necrotic)))
    seg = np.zeros(shape, np.int16)
    for enhancing, edema, core, necrosis in lesions:
        core_name = "rim" if enhancing else "nonenh"
        layers += [("edema", edema), (core_name, core), ("necrosis", necrosis)]
        seg[edema >= .5] = SEG_CODES["edema"]
        seg[core >= .5] = SEG_CODES["enhancing"] if enhancing else SEG_CODES["necrosis"]
        seg[necrosis >= .5] = SEG_CODES["necrosis"]
    heterogeneity = smooth_noise3(rng, shape, 6)  # patchy tumour signal
    tumour = np.maximum.reduce([np.maximum(e, c) for _, e, c, _ in lesions])
    edema_gain = U(.7, 1.05)  # some cases have faint edema on FLAIR: a harder boundary
    images = {}
    for name, lut in CONTRASTS.items():
        lut = {k: v * U(.92, 1.08) for k, v in lut.items()}
        lut["edema"] = lut["wm"] + (lut["edema"] - lut["wm"]) * edema_gain
        img = np.zeros(shape, F32)
        for tissue, m in layers:
            img = paint(img, m, lut[tissue])
        img *= F32(1.0) + F32(U(.03, .08)) * heterogeneity * tumour
        img = ndimage.gaussian_filter(img, (.5, .5, .3))  # partial volume
        img *= np.exp(F32(U(.1, .3)) * smooth_noise3(rng, shape, 2))  # coil bias field
        img = rician_noise(rng, img, float(U(.015, .045))) * F32(U(800, 2500))
        images[name] = np.clip(np.rint(img), 0, 32767).astype(np.int16)
    return images, seg
