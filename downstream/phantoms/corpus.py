"""Write an unlabeled phantom pretraining corpus in mixed raw formats (docs/datasets.md).

Layout under `out/` (one sub-folder per family, each with a `dataset.json`):

    ct/ct_volume_NNN.nii.gz          int16 HU, ~8 axial slices per volume (last axis)
    mr/mr_volume_NNN.nii.gz          int16 brain MR, ~8 axial slices per volume
    xray/xray_NNNNN.dcm              DICOM DX, 12-bit; odd indices MONOCHROME1 (inverted)
    fundus/fundus_NNNNN.png          RGB
    dermoscopy/dermoscopy_NNNNN.jpg  RGB JPEG, quality 90
    ultrasound/ultrasound_NNNNN.png  grayscale (mode L)
    endoscopy/endoscopy_NNNNN.jpg    RGB JPEG, quality 90
    histology/histology_NNNNN.png    RGB

NIfTI volumes store the image rows along the second axis: `data[:, :, k].T` is slice k as
displayed (anterior up, patient right on the left); the affine is LPS+ (`aff2axcodes` gives
('L', 'P', 'S')), so canonical (RAS) reorientation also works. Every file is keyed on
(seed, family, index) via `sample_rng`, so equal calls give byte-identical files and a larger
`n` with the same seed reproduces the smaller corpus's 2D files.
"""
from __future__ import annotations

import gzip
import io
import json
import math
from pathlib import Path
from typing import Callable

import cv2
import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian,
    generate_uid,
)

from medssl_bench.downstream.phantoms.modalities import FAMILY_GENERATORS, VOLUME_GENERATORS
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import atomic_path, ensure_writable_dir, write_json_atomic

FAMILIES = ["ct", "mr", "xray", "fundus", "dermoscopy", "ultrasound", "endoscopy", "histology"]
MODALITY_OF = {
    "ct": "CT", "mr": "MR", "xray": "DX", "fundus": "fundus", "dermoscopy": "dermoscopy",
    "ultrasound": "US", "endoscopy": "endoscopy", "histology": "histology",
}
GENERATOR_NAME = "bench.phantoms"
GENERATOR_VERSION = 1
SLICES_PER_VOLUME = 8
MIN_SIZE = 16
_SPACING = {"ct": (0.8, 0.8, 2.5), "mr": (1.0, 1.0, 1.0)}  # mm, (column, row, slice)
_EXT = {"fundus": "png", "dermoscopy": "jpg", "ultrasound": "png", "endoscopy": "jpg",
        "histology": "png"}
_RGB_FAMILIES = ("fundus", "dermoscopy", "endoscopy", "histology")


def sample_rng(seed: int, family: str, index: int) -> np.random.Generator:
    """The generator behind file `index` (2D image or volume) of `family` for `seed`."""
    return np.random.default_rng([int(seed) % 2 ** 64, FAMILIES.index(family), int(index)])


def plan(n: int, families: list[str]) -> dict[str, int]:
    """Split n 2D images evenly over families (the first families take the remainder)."""
    base, extra = divmod(n, len(families))
    return {f: base + (i < extra) for i, f in enumerate(families)}


def volume_depths(count: int, per_volume: int = SLICES_PER_VOLUME) -> list[int]:
    """Slice counts of the volumes holding `count` slices: ceil(count/per) near-equal parts."""
    n_vol = math.ceil(count / per_volume)
    base, extra = divmod(count, n_vol) if n_vol else (0, 0)
    return [base + (i < extra) for i in range(n_vol)]


def xray_is_monochrome1(index: int) -> bool:
    return index % 2 == 1


# ----------------------------------------------------------------------------- writers
def _nifti_bytes(vol: np.ndarray, spacing: tuple[float, float, float]) -> bytes:
    data = np.ascontiguousarray(vol.transpose(1, 0, 2))  # (column, row, slice)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(data.shape) - 1) / 2.0)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=[GENERATOR_NAME, str(GENERATOR_VERSION), str(seed),
                                      *map(str, parts)])


def _dicom_dataset(img: np.ndarray, seed: int, index: int) -> Dataset:
    """A DX 'for presentation' object; MONOCHROME1 files store 4095 - anatomy."""
    mono1 = xray_is_monochrome1(index)
    sop_uid = _uid(seed, "xray", index, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _uid(seed, "xray", index, "study")
    ds.SeriesInstanceUID = _uid(seed, "xray", index, "series")
    ds.PatientName = "Phantom^XRay"
    ds.PatientID = f"PHANTOM-{seed}-{index:05d}"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, index + 1
    ds.Modality = "DX"
    ds.Manufacturer = GENERATOR_NAME
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    spacing = f"{400.0 / img.shape[0]:.4f}"
    ds.ImagerPixelSpacing = ds.PixelSpacing = [spacing, spacing]
    ds.BurnedInAnnotation = "NO"
    stored = (4095 - img) if mono1 else img
    ds.set_pixel_data(stored.astype(np.uint16), "MONOCHROME1" if mono1 else "MONOCHROME2", 12,
                      generate_instance_uid=False)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if mono1 else -1
    return ds


def _image_bytes(img: np.ndarray, family: str) -> bytes:
    buf = io.BytesIO()
    if _EXT[family] == "jpg":
        Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=90)
    else:
        Image.fromarray(img, "RGB" if family in _RGB_FAMILIES else "L").save(buf, format="PNG")
    return buf.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_family(folder: Path, family: str, count: int, seed: int, size: int,
                 progress: Callable[[int], None] | None = None) -> int:
    """Write `count` 2D images of one family (plus dataset.json); returns files written."""
    files = 0
    if family in VOLUME_GENERATORS:
        for i, depth in enumerate(volume_depths(count)):
            vol = VOLUME_GENERATORS[family](sample_rng(seed, family, i), size, depth)
            _write_bytes(folder / f"{family}_volume_{i:03d}.nii.gz", _nifti_bytes(vol, _SPACING[family]))
            files += 1
            if progress:
                progress(depth)
    else:
        for i in range(count):
            img = FAMILY_GENERATORS[family](sample_rng(seed, family, i), size)
            if family == "xray":
                path = folder / f"xray_{i:05d}.dcm"
                with atomic_path(path) as tmp:
                    _dicom_dataset(img, seed, i).save_as(tmp, enforce_file_format=True)
            else:
                _write_bytes(folder / f"{family}_{i:05d}.{_EXT[family]}", _image_bytes(img, family))
            files += 1
            if progress:
                progress(1)
    write_json_atomic(folder / "dataset.json", {
        "dataset": family, "modality": MODALITY_OF[family], "synthetic": True,
        "generator": GENERATOR_NAME, "generator_version": GENERATOR_VERSION, "seed": seed,
    })
    return files + 1


def synthesize_corpus(out: Path, n: int, seed: int, size: int = 96,
                      families: list[str] | None = None,
                      progress: Callable[[int], None] | None = None) -> dict:
    """Write about `n` 2D phantom images (split evenly over `families`) under `out`.

    Returns {"out", "n_images", "per_family", "files", "seed"}; `files` counts every file
    written, dataset.json included. Existing files of a previous corpus are overwritten in
    place (same names, same bytes for the same seed); other files are left alone.
    """
    families = list(FAMILIES if families is None else families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise UserError(f"unknown phantom families {unknown}; choose from {', '.join(FAMILIES)}")
    if not families or len(set(families)) != len(families):
        raise UserError("families must be a non-empty list without repeats")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < len(families):
        raise UserError(f"n={n} is too small: need at least one image per family "
                        f"({len(families)} families)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UserError(f"seed must be an integer, got {seed!r}")
    if int(size) < MIN_SIZE:
        raise UserError(f"size={size} is too small (minimum {MIN_SIZE} px)")
    out = ensure_writable_dir(Path(out))
    counts, files = plan(int(n), families), 0
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # small images: OpenCV's thread pool costs more than it saves
    try:
        for family in families:
            folder = ensure_writable_dir(out / family)
            files += write_family(folder, family, counts[family], int(seed), int(size), progress)
    finally:
        cv2.setNumThreads(threads)
    return {"out": str(out), "n_images": sum(counts.values()), "per_family": counts,
            "files": files, "seed": int(seed)}


def read_manifest(folder: Path) -> dict:
    """The dataset.json of one family folder."""
    return json.loads((Path(folder) / "dataset.json").read_text())
