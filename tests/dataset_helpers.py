"""Helpers shared by the dataset-adapter tests."""
from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medssl_bench.harness.errors import UserError


def file_digests(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{relative path: sha256} of every file under `root` (names in `skip` left out)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def raises(call, *fragments: str) -> str:
    """`call()` raises a one-line UserError containing every fragment; returns the message."""
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def mask_of(sample) -> np.ndarray:
    return np.asarray(Image.open(sample.mask))


def rewrite_nifti(path: Path, change) -> None:
    """Replace a NIfTI volume's voxels with change(voxels), same affine."""
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(change(np.asarray(img.dataobj).copy()), img.affine), str(path))
