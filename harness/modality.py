"""Modality names for corpus entries, from dataset.json values, DICOM Modality codes and folder names."""
from __future__ import annotations

import re

# One modality vocabulary for dataset.json values, DICOM Modality codes and folder-name guesses:
# ct mr xray us fundus dermoscopy endoscopy histology (and mammo nm pet micro oct...). Other
# values pass through lower-cased. OT ("other") tells nothing: fall through to the next source.
DICOM_MODALITIES = {
    "CT": "ct", "MR": "mr", "CR": "xray", "DX": "xray", "DR": "xray", "RG": "xray", "PX": "xray",
    "IO": "xray", "XA": "xray", "RF": "xray", "MG": "mammo", "US": "us", "IVUS": "us", "NM": "nm",
    "PT": "pet", "OP": "fundus", "XC": "dermoscopy", "ES": "endoscopy", "SM": "histology",
    "GM": "micro", "OCT": "oct",
}
# Folder-name guesses: whole tokens for short, ambiguous keywords ("us", "ct"); substrings for
# long ones ("dermoscopy" -> derm). "mri" only as a token: "primary" contains it.
TOKEN_MODALITIES = {"ct": "ct", "mr": "mr", "mri": "mr", "us": "us", "xray": "xray", "cxr": "xray"}
SUBSTRING_MODALITIES = {
    "ultrasound": "us", "xray": "xray", "x-ray": "xray", "cxr": "xray", "fundus": "fundus",
    "derm": "dermoscopy", "endo": "endoscopy", "histo": "histology",
}


def guess_modality(folder_name: str) -> str:
    """A modality from a folder name ('chest_xray' -> xray, 'brain-MRI' -> mr), else 'unknown'."""
    name = folder_name.lower()
    for token in re.split(r"[^a-z0-9]+", name):
        if token in TOKEN_MODALITIES:
            return TOKEN_MODALITIES[token]
    for keyword, modality in SUBSTRING_MODALITIES.items():
        if keyword in name:
            return modality
    return "unknown"


def normalize_modality(value: str | None) -> str | None:
    """'DX' -> 'xray', 'US' -> 'us', 'Fundus' -> 'fundus'; None for missing or 'OT'."""
    code = str(value or "").strip()
    if not code or code.upper() == "OT":
        return None
    return DICOM_MODALITIES.get(code.upper(), code.lower())
