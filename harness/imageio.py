"""Decode every image format the corpus accepts into a display-ready uint8 array.

Formats: PNG, JPEG, TIFF, BMP, GIF (Pillow), DICOM (pydicom) and NIfTI volumes (nibabel).
The output of `read_pixels` is what the corpus hashes and what the training loader sees:

- 8-bit images are kept as stored; palette images are expanded through their palette; alpha is
  dropped; an RGB image whose three channels are equal becomes grayscale (HxW), so the same pixels
  hash the same whether saved as grayscale PNG, palette GIF or RGB BMP.
- Anything that is not 8-bit (16-bit PNG/TIFF, float TIFF, DICOM without a window) is windowed
  from its 0.5-99.5 percentiles to 0..255.
- DICOM: modality LUT (rescale slope/intercept), then the VOI LUT or the window stored in the
  file, MONOCHROME1 inverted, palette colour expanded, YBR converted to RGB; multi-frame files
  have one slice per frame.
- NIfTI: reoriented to the closest canonical (RAS+) orientation, windowed once per volume (so all
  slices of a volume share one intensity scale), sliced along the last spatial (axial) axis and
  rotated upright. A 4D+ volume (e.g. fMRI) contributes its FIRST volume only: the other time
  points are near-copies of it and would only add correlated slices to a pretraining corpus.
- Multi-page TIFF and animated GIF: the first page only (pyramidal TIFFs repeat one image at
  lower resolutions).

Every decode failure raises `CorruptImageError(reason, path)`. Non-image DICOM: harness.dicom_objects.

Images over the pixel budget (harness.pixel_budget) are refused from their header, before decoding.
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

from medssl_bench.harness.dicom_objects import dicom_non_image  # noqa: F401  (re-exported)
from medssl_bench.harness.dicom_objects import NonImageObject, pixel_less_label, sop_class_name
from medssl_bench.harness.errors import CorruptImageError
from medssl_bench.harness.pixel_budget import MAX_IMAGE_PIXELS, check_pixel_budget, check_volume_budget
from medssl_bench.harness.suffixes import DICOM_SUFFIXES, NIFTI_SUFFIXES, PIL_SUFFIXES, SUPPORTED_SUFFIXES  # noqa: F401


WINDOW_PERCENTILES = (0.5, 99.5)
NIFTI_CACHE_VOLUMES = 4  # the training loader reads slices one by one: keep a few volumes decoded


def image_kind(path: str | Path) -> str | None:
    """'pil', 'dicom', 'nifti' or None (not an image this module reads). Suffixes are
    case-insensitive. A file without a known suffix counts as DICOM when it has the 'DICM'
    preamble: scanners name files '6154', 'IM0001' or '1.2.840.113619.2.55.504'."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(PIL_SUFFIXES):
        return "pil"
    if name != "dicomdir" and _has_dicom_preamble(path):  # DICOMDIR: an index, never an image
        return "dicom"
    return None


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def count_slices(path: str | Path) -> int:
    """Number of 2D images in the file: 1 for 2D formats, the axial slices of a NIfTI volume,
    the frames of a multi-frame DICOM."""
    kind = _require_kind(path)
    with _decoding(path):
        if kind == "nifti":
            return _nifti_axial_count(path)
        if kind == "dicom":
            return _dicom_frame_count(_load_dicom(path), path)
        return 1


def read_pixels(path: str | Path, slice_index: int | None = None) -> np.ndarray:
    """Decode one 2D image as uint8, HxW (grayscale) or HxWx3 (colour); see the module docstring.

    `slice_index` picks the axial slice of a NIfTI volume or the frame of a multi-frame DICOM;
    None (or 0) means the only image of a 2D file.
    """
    kind = _require_kind(path)
    with _decoding(path):
        if kind == "nifti":
            volume = _load_nifti_volume(*_cache_key(path))
            return _nifti_slice(volume, _check_index(slice_index, volume.shape[2], path))
        if kind == "dicom":
            ds = _load_dicom(path)
            index = _check_index(slice_index, _dicom_frame_count(ds, path), path)
            return _dicom_frame(ds, index, path)
        _check_index(slice_index, 1, path)
        return _read_pil(path)


def iter_pixels(path: str | Path) -> Iterator[tuple[int | None, np.ndarray]]:
    """Yield (slice_index, pixels) for every 2D image in the file, decoding the file once.

    slice_index is None for single images and an int for NIfTI slices and multi-frame DICOM
    frames - the value the manifest records and `read_pixels` accepts back.
    """
    kind = _require_kind(path)
    if kind == "pil":
        with _decoding(path):
            pixels = _read_pil(path)
        yield None, pixels
        return
    with _decoding(path):
        if kind == "nifti":
            volume = _load_nifti_volume(*_cache_key(path))
            count = volume.shape[2]
        else:
            ds = _load_dicom(path)
            count = _dicom_frame_count(ds, path)
    for index in range(count):
        with _decoding(path):
            if kind == "nifti":
                pixels = _nifti_slice(volume, index)
            else:
                pixels = _dicom_frame(ds, index, path)
        yield (index if kind == "nifti" or count > 1 else None), pixels


def load_rgb(path: str | Path, slice_index: int | None = None) -> Image.Image:
    """The image as a PIL image in mode "RGB".

    Grayscale medical images (CT, MR, X-ray...) are replicated to three identical channels: the
    harness feeds every backbone 3-channel input so that ImageNet-style architectures and
    colour modalities (fundus, dermoscopy, histology) share one pipeline.
    """
    pixels = read_pixels(path, slice_index)
    return Image.fromarray(pixels).convert("RGB")


def dicom_modality(path: str | Path) -> str | None:
    """The DICOM Modality tag (CT, MR, CR, US...), or None when absent or unreadable."""
    try:
        with _decoding(path):
            return str(_load_dicom(path).get("Modality") or "") or None
    except CorruptImageError:
        return None


# ---------------------------------------------------------------------------------- helpers


def window_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255, clipping outside."""
    values = np.asarray(values, dtype=np.float32)
    scale = 255.0 / max(float(high) - float(low), 1e-6)
    out = (values - np.float32(low)) * np.float32(scale)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def percentile_window(values: np.ndarray) -> np.ndarray:
    """Window from the 0.5-99.5 percentiles to 0..255 (a constant image maps to 0)."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32))
    low, high = np.percentile(values, WINDOW_PERCENTILES)
    return window_to_uint8(values, low, high)


def _require_kind(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise CorruptImageError("file not found" if not path.exists() else "not a file", path)
    kind = image_kind(path)
    if kind is None:
        raise CorruptImageError(
            f"not a supported image file (expected one of {', '.join(SUPPORTED_SUFFIXES)} "
            "or a DICOM file)",
            path,
        )
    return kind


@contextlib.contextmanager
def _decoding(path: str | Path) -> Iterator[None]:
    """Silence decoder warnings and turn any decoder exception into CorruptImageError naming the
    file: Pillow, pydicom, nibabel and zlib raise a zoo of types for bad input, the user needs one
    line. (Never wrap a `yield` to the caller in it: the warning filter would leak.)"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except CorruptImageError:
        raise
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        raise CorruptImageError(f"cannot decode ({type(exc).__name__}: {message})", path) from None


def _check_index(slice_index: int | None, count: int, path: str | Path) -> int:
    index = 0 if slice_index is None else int(slice_index)
    if not 0 <= index < count:
        raise CorruptImageError(f"slice {slice_index} out of range (the file has {count} slice(s))", path)
    return index


def _cache_key(path: str | Path) -> tuple[str, int, int]:
    """(path, mtime, size): a rewritten file is decoded again, not served stale from a cache."""
    stat = os.stat(path)
    return str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size


def _as_display(pixels: np.ndarray) -> np.ndarray:
    """uint8 arrays pass; anything wider is percentile-windowed; equal RGB channels collapse."""
    if pixels.dtype != np.uint8:
        pixels = percentile_window(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 3 and np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(
        pixels[..., 0], pixels[..., 2]
    ):
        pixels = pixels[..., 0]
    return np.ascontiguousarray(pixels)


# --------------------------------------------------------------------------------- Pillow


def _read_pil(path: str | Path) -> np.ndarray:
    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as err:  # over twice Pillow's limit: refused by Pillow itself
        raise CorruptImageError(f"over the pixel budget of {MAX_IMAGE_PIXELS:,} ({err}); downsample it", path) from None
    with opened as img:
        check_pixel_budget(img.size, path)  # from the header: before a single row is decoded
        img.load()  # decode now: truncated files fail here, inside _decoding
        img = ImageOps.exif_transpose(img)  # phone/camera photos (derm, fundus) store rotation
        mode = img.mode
        if mode == "P" or mode == "PA":
            img = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
        elif mode == "1":
            img = img.convert("L")
        elif mode in ("LA", "La"):
            img = img.getchannel("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
            img = img.convert("RGB")
        pixels = np.asarray(img)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]  # RGBA -> RGB: drop alpha, keep stored colours
    if pixels.ndim not in (2, 3) or pixels.size == 0:
        raise CorruptImageError(f"unsupported image layout {pixels.shape} (mode {mode})", path)
    return _as_display(pixels)


# ---------------------------------------------------------------------------------- DICOM


@functools.lru_cache(maxsize=4)
def _load_dicom_cached(key: tuple[str, int, int]):
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = key[0]
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        # Older (ACR-NEMA style) files lack the 128-byte preamble and file meta.
        ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise CorruptImageError("not a DICOM image (no 'DICM' header and no pixel data)", path)
    implicit, little = ds.original_encoding
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (
        pydicom.uid.ImplicitVRLittleEndian if implicit
        else pydicom.uid.ExplicitVRLittleEndian if little
        else pydicom.uid.ExplicitVRBigEndian
    )
    return ds


def _load_dicom(path: str | Path):
    ds = _load_dicom_cached(_cache_key(path))
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        name = sop_class_name(ds.get("SOPClassUID")) or "none: truncated or damaged?"
        message = f"DICOM file has no pixel data (SOP class {name})"
        if (label := pixel_less_label(ds)) is not None:
            raise NonImageObject(label, message, path)
        raise CorruptImageError(message, path)
    return ds


def _dicom_frame_count(ds, path: str | Path) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        raise CorruptImageError(f"bad NumberOfFrames {ds.get('NumberOfFrames')!r}", path) from None


def _dicom_frame(ds, index: int, path: str | Path) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array

    check_pixel_budget((int(ds.get("Columns") or 0), int(ds.get("Rows") or 0)), path, "DICOM frame")
    try:
        raw = pixel_array(ds, index=index)  # one frame; YBR is converted to RGB here
    except RuntimeError as err:  # pydicom tried each decoder it has (pylibjpeg, Pillow): pass on its reasons
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if syntax is None or not syntax.is_compressed:
            raise
        raise CorruptImageError(f"no installed decoder could read its '{syntax.name}' pixel data: "
                                + " ".join(str(err).split())[:400], path) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        if rgb.dtype != np.uint8:
            # 16-bit palette entries: keep the high byte - unless the whole table stays within
            # 0..255 (some writers declare 16 bits and store 8-bit values).
            first, entries = ds.RedPaletteColorLookupTableDescriptor[1], 2 ** (8 * raw.itemsize)
            table = apply_color_lut(np.arange(first, first + entries).astype(raw.dtype), ds)
            rgb = (rgb >> 8 if table.max() > 255 else rgb).astype(np.uint8)
        return _as_display(rgb)
    if raw.ndim == 3:  # colour
        bits = int(ds.get("BitsStored", 8))
        if raw.dtype != np.uint8:
            raw = (raw.astype(np.uint64) >> max(bits - 8, 0)).astype(np.uint8)
        return _as_display(raw)

    values = apply_modality_lut(raw, ds)  # stored values -> HU / physical units
    voi = ds.get("VOILUTSequence")
    if voi and voi[0].get("LUTDescriptor") is not None and voi[0].get("LUTData") is not None:
        out = apply_voi(np.round(values).astype(np.int64), ds)
        descriptor = voi[0].LUTDescriptor
        table = apply_voi(np.arange(descriptor[1], descriptor[1] + (descriptor[0] or 65536)), ds)
        gray = window_to_uint8(out, table.min(), table.max())
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        gray = window_to_uint8(values, center - width / 2, center + width / 2)
    elif int(ds.get("BitsStored", 8)) == 1:  # bit masks (DICOM-SEG): 0/1 -> 0/255
        gray = (np.asarray(values) > 0).astype(np.uint8) * 255
    elif raw.dtype == np.uint8 and values is raw and int(ds.get("BitsStored", 8)) == 8:
        gray = raw  # plain 8-bit, no rescale: as stored
    else:
        gray = percentile_window(values)
    if photometric == "MONOCHROME1":  # stored inverted (CR/DX): high values are dark
        gray = 255 - gray
    return _as_display(gray)


def _first(value) -> float:
    """WindowCenter/Width may be multi-valued (several preset windows): take the first."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


# ---------------------------------------------------------------------------------- NIfTI


def _nifti_axial_count(path: str | Path) -> int:
    """Slices along the axis that becomes the last one after `as_closest_canonical`, read from
    the header alone (no voxel data is loaded)."""
    import nibabel as nib

    img = nib.load(str(path))
    shape = img.shape
    check_volume_budget(shape, path)
    if len(shape) < 3:
        return 1
    ornt = nib.orientations.io_orientation(img.affine[:4, :4] if img.affine is not None else np.eye(4))
    axial = [axis for axis in range(3) if ornt[axis, 0] == 2]
    return int(shape[axial[0]] if axial else shape[2])


@functools.lru_cache(maxsize=NIFTI_CACHE_VOLUMES)
def _load_nifti_volume(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """The volume in canonical orientation, windowed to uint8 once (shared intensity scale)."""
    import nibabel as nib

    img = nib.load(path)
    check_volume_budget(img.shape, path)
    if len(img.shape) < 2:
        raise CorruptImageError(f"NIfTI has {len(img.shape)} dimension(s), need 2 or more", path)
    if len(img.shape) > 3:
        # 4D+ (time series, DWI): keep the first volume - see the module docstring.
        img = img.slicer[(slice(None),) * 3 + (0,) * (len(img.shape) - 3)]
    if len(img.shape) == 3:
        img = nib.as_closest_canonical(img)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim == 2:
        data = data[:, :, None]
    if data.size == 0:
        raise CorruptImageError(f"NIfTI volume is empty (shape {data.shape})", path)
    return percentile_window(data)


def _nifti_slice(volume: np.ndarray, index: int) -> np.ndarray:
    # Canonical RAS+: axis 0 runs left->right, axis 1 posterior->anterior. rot90 puts anterior at
    # the top of the image, the usual upright axial view.
    return _as_display(np.rot90(volume[:, :, index]))
