"""Kvasir-SEG-like colonoscopy frame + polyp mask + polyp boxes (synthetic Kvasir writer).

Reuses `modalities.endoscopy` (mucosal folds, lumen, vignetting, specular glints as distractors,
polyps as shaded domes with their own texture and highlight). Added for Kvasir-SEG:
- every Kvasir-SEG image shows at least one polyp, so a frame is redrawn (next sub-stream of
  the same key) until 1-3 polyp regions remain; fragments too small to annotate are dropped;
- rectangular, variable-size frames: the square phantom is rendered at the longer side and
  resized; the float polyp map is resized with it and thresholded at 0.5;
- in some frames the ScopeGuide position inset of the real images (a dark box with a green
  scope outline in the lower-left corner), which hides whatever lies below it, polyps included.
The mask file is written from the soft (antialiased) polyp map, as the real masks have grey
border pixels, so the JPEG mask needs a threshold; `mask` is that map thresholded at 0.5.
Boxes come from the connected components (8-connectivity) of the final mask, in pixel-edge
coordinates: xmin/ymin = first column/row of the component, xmax/ymax = last column/row + 1.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
from scipy import ndimage

from medssl_bench.downstream.phantoms.modalities import endoscopy

MAX_POLYPS = 3
MIN_AREA_FRACTION = 0.002  # components below this share of the image are dropped from the mask
INSET_PROBABILITY = 0.3
_EIGHT = np.ones((3, 3), bool)


class KvasirFrame(NamedTuple):
    image: np.ndarray  # RGB uint8 (H, W, 3)
    mask: np.ndarray  # uint8 0/1 (H, W): the intended ground truth
    soft: np.ndarray  # uint8 0..255 (H, W): antialiased mask, >= 128 exactly where mask is 1
    boxes: list[dict]  # Kvasir json boxes of the mask's components


def polyp_boxes(mask: np.ndarray) -> list[dict]:
    """Kvasir-style boxes of the 8-connected components of a 0/1 mask, sorted by (ymin, xmin)."""
    labels, count = ndimage.label(mask > 0, structure=_EIGHT)
    boxes = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        boxes.append({"label": "polyp", "xmin": int(sl[1].start), "ymin": int(sl[0].start),
                      "xmax": int(sl[1].stop), "ymax": int(sl[0].stop)})
    return sorted(boxes, key=lambda b: (b["ymin"], b["xmin"], b["xmax"], b["ymax"]))


def _drop_fragments(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, int]:
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return mask, 0
    areas = ndimage.sum_labels(np.ones_like(mask), labels, index=np.arange(1, count + 1))
    keep = np.concatenate([[False], areas >= min_area])
    return keep[labels].astype(np.uint8), int(keep.sum())


def _scope_inset(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> None:
    """Draw the ScopeGuide inset in the lower-left corner (in place) and clear the mask below it."""
    height, width = mask.shape
    w, h = int(width * rng.uniform(.18, .26)), int(height * rng.uniform(.2, .3))
    y0 = height - h
    img[y0:, :w] = (img[y0:, :w] * rng.uniform(.05, .15)).astype(np.uint8)
    pts = np.stack([np.linspace(.15, .85, 8) * w, y0 + (.5 + .3 * np.sin(np.linspace(0, 3, 8)
                    + rng.uniform(0, 3))) * h], 1).astype(np.int32)
    cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, (40, 200, 60), max(1, width // 64), cv2.LINE_AA)
    mask[y0:, :w] = 0


def kvasir_sample(seed_key: list[int], height: int, width: int) -> KvasirFrame:
    """One synthetic frame with its polyp mask, soft mask and boxes.
    `seed_key` (a list of ints) keys the random streams, so the result is reproducible."""
    side = max(int(height), int(width))
    min_area = max(9, int(MIN_AREA_FRACTION * height * width))
    for attempt in range(64):
        rng = np.random.default_rng([*seed_key, attempt])
        masks: dict = {}
        img = endoscopy(rng, side, masks=masks)
        polyp = masks.get("polyp", np.zeros((side, side), np.float32))
        if (height, width) != (side, side):
            img = cv2.resize(img, (int(width), int(height)), interpolation=cv2.INTER_AREA)
            polyp = cv2.resize(polyp, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
        img = np.ascontiguousarray(img)
        soft = np.clip(np.rint(polyp * 255), 0, 255).astype(np.uint8)
        if rng.random() < INSET_PROBABILITY:
            _scope_inset(rng, img, soft)
        mask, count = _drop_fragments((soft >= 128).astype(np.uint8), min_area)
        if 1 <= count <= MAX_POLYPS:
            # keep the grey rim of kept polyps only (dropped fragments vanish from the file too)
            rim = cv2.dilate(mask, np.ones((5, 5), np.uint8)) > 0
            soft = np.where(mask > 0, soft, np.where(rim, np.minimum(soft, 127), 0)).astype(np.uint8)
            return KvasirFrame(img, mask, soft, polyp_boxes(mask))
    raise RuntimeError(f"no frame with 1-{MAX_POLYPS} polyps for key {seed_key}")  # phantom bug
