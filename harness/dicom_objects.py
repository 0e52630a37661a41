"""Which DICOM objects are pictures of a patient, and which are not.

A DICOM folder from a PACS or a TCIA download mixes images with objects that only travel beside
them: segmentations, RT structure sets, plans and doses, presentation states, structured reports,
key-object selections, encapsulated PDFs, raw data. Some of these carry pixel data (a SEG's masks,
an RT dose grid), so decoding alone cannot tell them apart; their SOP Class UID can. A pretraining
corpus must not learn masks or dose grids as if they were scans, so the corpus leaves these out
and counts them (harness.corpus).

The classes are found by pattern over the keywords of pydicom's own UID dictionary rather than
typed in by hand, so classes added by later DICOM editions (e.g. Label Map Segmentation) are
caught when pydicom learns them. Each group is named by the Modality defined term the standard
gives that object family (PS3.3 C.7.3.1.1.1), which is also the fallback when a file carries a
private or unknown SOP class but an honest Modality.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from medssl_bench.harness.errors import CorruptImageError

# (label, regular expression over the SOP class keyword in pydicom's UID dictionary)
NON_IMAGE_GROUPS = (
    ("SEG", r"SegmentationStorage$"),  # Segmentation, Surface Segmentation
    ("RTSTRUCT", r"^RTStructureSetStorage$"),
    ("RTPLAN", r"^RT(Ion)?PlanStorage$"),
    ("RTDOSE", r"^RTDoseStorage$"),  # a dose grid has pixel data but shows no anatomy
    ("RTRECORD", r"Record\w*Storage$"),  # treatment records of every generation
    ("PR", r"PresentationStateStorage$"),  # GSPS, colour, blending, volumetric...
    ("KO", r"^KeyObjectSelectionDocumentStorage$"),
    ("SR", r"SRStorage(Trial)?$|^ProcedureLogStorage$"),
    ("DOC", r"^Encapsulated\w+Storage$"),  # PDF, CDA, STL, OBJ, MTL
    ("RAW", r"^RawDataStorage$"),
    ("REG", r"SpatialRegistrationStorage$"),
    ("FID", r"^SpatialFiducialsStorage$"),
)
NON_IMAGE_MODALITIES = frozenset(label for label, _ in NON_IMAGE_GROUPS)


def _uid_table() -> dict[str, str]:
    from pydicom._uid_dict import UID_dictionary  # name, type, info, retired, keyword

    table = {}
    for uid, (_name, kind, _info, _retired, keyword) in UID_dictionary.items():
        if kind != "SOP Class":
            continue
        for label, pattern in NON_IMAGE_GROUPS:
            if re.search(pattern, keyword):
                table[uid] = label
                break
    return table


_NON_IMAGE_UIDS: dict[str, str] | None = None


def non_image_label(sop_class_uid: str | None, modality: str | None) -> str | None:
    """The group label (SEG, RTSTRUCT, SR...) of a non-image object, or None for anything else,
    images and unknown classes included (those are left to the decoder to judge)."""
    global _NON_IMAGE_UIDS
    if _NON_IMAGE_UIDS is None:
        _NON_IMAGE_UIDS = _uid_table()
    label = _NON_IMAGE_UIDS.get(str(sop_class_uid or "").strip())
    if label is None and str(modality or "").strip().upper() in NON_IMAGE_MODALITIES:
        label = str(modality).strip().upper()
    return label


def sop_class_name(sop_class_uid: str | None) -> str | None:
    """pydicom's name of the SOP class ("Segmentation Storage"), the UID itself when pydicom
    does not know it, None when the file has none."""
    if not sop_class_uid:
        return None
    from pydicom.uid import UID

    uid = UID(str(sop_class_uid).strip())
    return uid.name if uid.name else str(uid)


class NonImageObject(CorruptImageError):
    """Raised by the decoder for a DICOM object that holds no image; `label` names its family
    (SEG, SR, ... or the Modality). A CorruptImageError, so callers that only read images
    still see one clear line."""

    def __init__(self, label: str, message: str, path: str | Path):
        super().__init__(message, path)
        self.label = label


def dicom_non_image(path: str | Path) -> str | None:
    """The family label when the DICOM file at `path` is not an image object, judged from its
    SOP class and Modality with the header read alone (pixel data never loaded); None for images
    and for headers that cannot be parsed (decoding then reports what is wrong)."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # any parse failure: not ours to report, the decoder names it
        return None
    meta = getattr(ds, "file_meta", None)
    sop = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
    return non_image_label(sop, ds.get("Modality"))


def pixel_less_label(ds) -> str | None:
    """For a dataset without pixel data: its label when it is a known non-image storage class
    (a waveform, a hanging protocol: pydicom's name has no "Image" in it), None when it claims to
    be an image (then the file is broken) or has no SOP class at all (truncated)."""
    sop = ds.get("SOPClassUID")
    label = non_image_label(sop, ds.get("Modality"))
    name = sop_class_name(sop)
    if label is None and name and name != str(sop).strip() and "Image" not in name:
        label = str(ds.get("Modality") or "").strip().upper() or "OTHER"
    return label
