"""ISIC-2018-like dermoscopy image + lesion mask at a non-square size (synthetic ISIC writer).

Reuses `modalities.dermoscopy` (skin, multi-tone star-shaped lesion with pigment network, hairs,
dark dermoscope ring, vignetting). Two things are added for segmentation ground truth:
- the phantom's `masks["lesion"]` is the *visible* lesion: hairs drawn over it cut notches and
  holes. ISIC annotators outline the lesion through the hairs, so the lesion is recovered under
  hair: where hair is partly transparent the occlusion is divided out, and pixels hidden by
  (near-)opaque hair take the label of the nearest visible pixel;
- real ISIC images are rectangular and vary in size, so the square phantom is rendered at the
  longer side and resized to (height, width); the float lesion map is resized with it and then
  thresholded at 0.5.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from medssl_bench.downstream.phantoms.modalities import dermoscopy

HAIR_OPAQUE = 0.5  # occlusion above which the lesion below a hair is not recoverable by division


def lesion_under_hair(lesion: np.ndarray, hair: np.ndarray) -> np.ndarray:
    """Float lesion map with hair occlusion removed (see module docstring)."""
    lesion = lesion.astype(np.float32)
    hair = np.clip(hair.astype(np.float32), 0.0, 1.0)
    hidden = hair >= HAIR_OPAQUE
    full = np.where(hidden, 0.0, lesion / np.maximum(1.0 - hair, 1e-3))
    if hidden.any() and not hidden.all():
        # index of the nearest visible pixel for every pixel (visible ones point to themselves)
        _, (iy, ix) = ndimage.distance_transform_edt(hidden, return_indices=True)
        full = full[iy, ix]
    return np.clip(full, 0.0, 1.0)


def isic_sample(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image (H, W, 3), lesion mask uint8 0/1 (H, W)) for one synthetic ISIC case."""
    side = max(int(height), int(width))
    masks: dict = {}
    img = dermoscopy(rng, side, masks=masks)
    lesion = lesion_under_hair(masks["lesion"], masks.get("hair", np.zeros_like(masks["lesion"])))
    if (height, width) != (side, side):
        img = cv2.resize(img, (int(width), int(height)), interpolation=cv2.INTER_AREA)
        lesion = cv2.resize(lesion, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    return img, (lesion >= 0.5).astype(np.uint8)
