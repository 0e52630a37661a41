"""VinDr-CXR-like chest radiographs with findings and three radiologists' boxes (synthetic VinDr writer).

`chest_case` draws a PA chest film with `modalities.xray` and adds findings at anatomically
plausible places, each a distinct shape, superimposed additively (attenuation adds up, so the
ribs and the noise stay visible through an opacity):
- 3  Cardiomegaly: the heart blob enlarged 1.3-1.5x in width, its shadow spreading over the
     lungs; box = the enlarged heart's visible outline;
- 0  Aortic enlargement: a round soft-tissue knob bulging from the upper mediastinum into the
     lung on the patient's left (the image's right), above the heart;
- 8  Nodule/Mass: a small lobulated round blob well inside one lung;
- 10 Pleural effusion: a basal opacity filling the bottom of one lung under a meniscus that
     rises towards the lateral chest wall;
- 11 Pleural thickening: a thin band along the apex and upper lateral wall of one lung.
Boxes are pixel-edge coordinates (x_min = first column, x_max = last column + 1) of the drawn
shape's mask >= 0.5. A case may be taller than wide (real CXRs are portrait): the square
phantom is then stretched vertically and the boxes with it.

`annotate` plays the three radiologists: each box jittered by a few percent of its size, some
findings missed by one reader, sometimes a reader who saw nothing ("No finding", class 14).
`dicom_dataset` wraps a 12-bit image as a DX DICOM (MONOCHROME1 stores 4095 - value) with a
window centre/width that shows the same picture for both photometric interpretations.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid,
)

from medssl_bench.downstream.phantoms.modalities import xray
from medssl_bench.downstream.phantoms.primitives import harmonics, star_blob, superellipse

AORTIC, CARDIOMEGALY, NODULE, EFFUSION, THICKENING = 0, 3, 8, 10, 11
DRAWN = (AORTIC, CARDIOMEGALY, NODULE, EFFUSION, THICKENING)  # drawing order (the heart first)
NO_FINDING = 14
MAX_VALUE = 4095
F32 = np.float32


class ChestCase(NamedTuple):
    image: np.ndarray  # uint16 (H, W), 0..4095, attenuation bright (MONOCHROME2 convention)
    boxes: list  # [(class_id, (x_min, y_min, x_max, y_max))] in pixels of `image`


def _norm(size: int, px: float) -> float:
    """Pixel coordinate (pixel centres at k + 0.5 edges) -> the primitives' [-1, 1] frame."""
    return (px + 0.5) * 2.0 / size - 1.0


def _bbox(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    on = mask >= 0.5
    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    if not len(rows):
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _lung_side(masks: dict, size: int, side: int) -> np.ndarray:
    """Soft mask of one lung: side -1 = the image's left half (the patient's right lung)."""
    lung = masks["lung"].copy()
    half = size // 2
    if side < 0:
        lung[:, half:] = 0
    else:
        lung[:, :half] = 0
    return lung


def _cardiomegaly(rng, img, masks, size):
    heart = masks["heart"]
    x0, y0, x1, y1 = _bbox(heart)
    lung_level = np.median(img[masks["lung"] >= 0.5])
    delta = max(float(np.median(img[heart >= 0.5]) - lung_level), 250.0)
    cx, cy = (x0 + x1) / 2 + rng.uniform(0, 0.05) * (x1 - x0), (y0 + y1) / 2 + rng.uniform(0, 0.08) * (y1 - y0)
    rx, ry = (x1 - x0) / 2 * rng.uniform(1.3, 1.5), (y1 - y0) / 2 * rng.uniform(1.1, 1.25)
    big = star_blob(size, (_norm(size, cx), _norm(size, cy)), (rx * 2 / size, ry * 2 / size),
                    harmonics(rng, 3, 0.04), rng.uniform(-0.2, 0.2), soft=1.5)
    grown = np.minimum(np.clip(big - heart, 0, 1), masks["lung"])  # the heart shadow spreads over the lungs
    img += grown * F32(delta)
    masks["lung"] = masks["lung"] * (F32(1) - grown)  # later findings see the lung that is left
    return np.maximum(heart, grown)


def _aortic_knob(rng, img, masks, size):
    heart, med = masks["heart"] >= 0.5, masks["mediastinum"] >= 0.5
    rows = np.flatnonzero(heart.any(axis=1))
    r = rng.uniform(0.045, 0.065) * size
    cy = max(rows[0] - 0.5 * r, r + 1)
    row = med[int(cy)] if med[int(cy)].any() else heart[rows[0]]
    cx = np.flatnonzero(row)[-1] - 0.1 * r
    knob = superellipse(size, (_norm(size, cx), _norm(size, cy)), (r * 2 / size,) * 2, 2.0, soft=1.2)
    target = float(np.median(img[heart])) + rng.uniform(50, 200)  # soft-tissue dense, never brighter
    img += knob * np.maximum(F32(target) - img, 0)
    return knob


def _nodule(rng, img, masks, size):
    side = int(rng.choice([-1, 1]))
    r = rng.uniform(0.035, 0.07) * size
    inside = cv2.distanceTransform((_lung_side(masks, size, side) >= 0.5).astype(np.uint8), cv2.DIST_L2, 5)
    ys, xs = np.nonzero(inside >= r + 1.5)
    if not len(ys):
        ys, xs = np.nonzero(inside >= inside.max() * 0.8)
    k = int(rng.integers(len(ys)))
    radii = (r * 2 / size, r * 2 / size * rng.uniform(0.85, 1.1))
    blob = star_blob(size, (_norm(size, xs[k]), _norm(size, ys[k])), radii, harmonics(rng, 4, 0.12),
                     rng.uniform(0, math.pi), soft=1.2)
    img += blob * F32(rng.uniform(700, 1100))
    return blob


def _effusion(rng, img, masks, size):
    side = int(rng.choice([-1, 1]))
    lung = _lung_side(masks, size, side)
    x0, y0, x1, y1 = _bbox(lung)
    height = y1 - y0
    level = y1 - rng.uniform(0.22, 0.35) * height
    xs = np.arange(size, dtype=F32) + F32(0.5)
    lateral = np.clip((x1 - xs) / (x1 - x0) if side < 0 else (xs - x0) / (x1 - x0), 0, 1)
    edge = level - rng.uniform(0.1, 0.2) * height * lateral ** 2  # meniscus: higher laterally
    ys = np.arange(size, dtype=F32)[:, None] + F32(0.5)
    fluid = lung * np.clip((ys - edge[None, :]) / F32(1.5) + F32(0.5), 0, 1)
    img += fluid * F32(rng.uniform(900, 1300))
    return fluid


def _thickening(rng, img, masks, size):
    side = int(rng.choice([-1, 1]))
    lung = (_lung_side(masks, size, side) >= 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(lung, cv2.DIST_L2, 5)
    x0, y0, x1, y1 = _bbox(lung)
    width = rng.uniform(0.03, 0.045) * size
    rows = (np.arange(size) < y0 + rng.uniform(0.25, 0.4) * (y1 - y0))[:, None]
    band = ((depth > 0) & (depth <= width) & rows).astype(F32)
    band = cv2.GaussianBlur(band, (0, 0), 0.6)
    img += band * F32(rng.uniform(900, 1200))
    return band


_DRAW = {CARDIOMEGALY: _cardiomegaly, AORTIC: _aortic_knob, NODULE: _nodule, EFFUSION: _effusion,
         THICKENING: _thickening}


def chest_case(key, size: int, findings: Sequence[int], height: int | None = None) -> ChestCase:
    """The chest film for `key` (a seed sequence) with `findings` (class ids from DRAWN) drawn,
    `size` wide and `height` (default `size`) tall, and the finding boxes."""
    rng = np.random.default_rng(key)
    masks: dict = {}
    img = xray(rng, size, masks=masks).astype(F32)
    boxes = []
    for cls in DRAWN:
        if cls in findings:
            box = _bbox(_DRAW[cls](rng, img, masks, size))
            if box is not None:
                boxes.append((cls, box))
    height = size if height is None else int(height)
    if height != size:
        img = cv2.resize(img, (size, height), interpolation=cv2.INTER_LINEAR)
        sy = height / size
        boxes = [(c, (b[0], b[1] * sy, b[2], b[3] * sy)) for c, b in boxes]
    return ChestCase(np.clip(np.rint(img), 0, MAX_VALUE).astype(np.uint16), boxes)


def annotate(rng: np.random.Generator, boxes: list, width: int, height: int, rads: Sequence[str], *,
             miss: float = 0.2, silent_reader: float = 0.15) -> list:
    """Three readers' rows [(rad_id, class_id, box or None)] for the true `boxes`: each box jittered
    (sd 4 % of its side, at least 0.4 px, rounded to 0.1 px, kept inside the image); a finding
    is missed by at most one reader (probability `miss`); with probability `silent_reader` one
    reader saw nothing at all. A reader without a box writes one "No finding" row."""
    rows = []
    silent = int(rng.integers(len(rads))) if boxes and rng.random() < silent_reader else -1
    for cls, box in boxes:
        misser = int(rng.integers(len(rads))) if silent < 0 and rng.random() < miss else -1
        for r, rad in enumerate(rads):
            if r in (silent, misser):
                continue
            b = np.asarray(box, dtype=np.float64)
            sd = np.maximum(0.4, 0.04 * np.array([b[2] - b[0], b[3] - b[1]] * 2))
            j = np.round(b + rng.normal(0.0, 1.0, 4) * sd, 1)
            j = np.clip(j, 0, [width, height, width, height])
            j[2], j[3] = max(j[2], j[0] + 1), max(j[3], j[1] + 1)
            rows.append((rad, cls, tuple(float(v) for v in j)))
    readers = {row[0] for row in rows}
    rows += [(rad, NO_FINDING, None) for rad in rads if rad not in readers]
    return rows


def display(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The 8-bit picture a viewer shows for MONOCHROME2 `values` and a window centre/width."""
    lo = center - width / 2
    return np.clip(np.rint((values.astype(np.float64) - lo) * 255.0 / width), 0, 255).astype(np.uint8)


def window_of(image: np.ndarray) -> tuple[int, int]:
    """A window (centre, width) spanning the image's 0.5-99.5 percentiles (MONOCHROME2 values)."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    width = max(int(round(hi - lo)), 16)
    return int(round((lo + hi) / 2)), width


def dicom_dataset(image: np.ndarray, monochrome1: bool, uid_parts: Sequence[object]) -> Dataset:
    """A DX 'for presentation' DICOM of the 12-bit `image` (MONOCHROME2 convention). MONOCHROME1
    stores 4095 - value and mirrors the window centre, so both show the same picture."""
    uid = lambda what: generate_uid(entropy_srcs=["bench.vindr_cxr", *map(str, uid_parts), what])  # noqa: E731
    center, width = window_of(image)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, uid("sop")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.PatientID = "anonymous"  # VinDr headers are de-identified
    ds.StudyDate = ds.ContentDate = "20200101"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = ds.PixelSpacing = [f"{400.0 / image.shape[1]:.4f}"] * 2
    stored = (MAX_VALUE - image.astype(np.int32)) if monochrome1 else image
    ds.set_pixel_data(stored.astype(np.uint16), "MONOCHROME1" if monochrome1 else "MONOCHROME2", 12,
                      generate_instance_uid=False)
    ds.WindowCenter, ds.WindowWidth = (MAX_VALUE - center if monochrome1 else center), width
    return ds
