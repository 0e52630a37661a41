"""Helpers shared by the dataset-adapter tests: what a test module downloads (`Download`, read by the
`raw` and `src` fixtures of tests/conftest.py), file digests, one-line-error checks, mask and NIfTI
access."""
from __future__ import annotations

import hashlib
import shutil
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


class Download:
    """A dataset test module's synthetic raw download, declared as `DOWNLOAD = Download(adapter,
    n=.., seed=.., size=..)` (or a dict of them): `adapter.synthesize(<tmp>/<folder>, **options)`.
    `part`: the sub-folder that the `src` fixture copies (e.g. "Kvasir-SEG"); "" copies it all."""

    def __init__(self, adapter, *, folder: str = "download", part: str = "", **options):
        self.adapter, self.folder, self.part, self.options = adapter, folder, part, options

    def write(self, tmp: Path) -> Path:
        return self.adapter.synthesize(tmp / self.folder, **self.options)

    def copy(self, raw: Path, tmp: Path) -> Path:
        """A private copy of the download `raw` (of its `part`) under `tmp`, to damage."""
        return Path(shutil.copytree(raw / self.part, tmp / (self.part or "src")))


def raises(call, *fragments: str) -> str:
    """`call()` raises a one-line UserError containing every fragment; returns the message."""
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def refused(adapter, src: Path, out_root: Path, *fragments: str) -> str:
    """`adapter.prepare(src, out_root)` raises a one-line UserError containing every fragment
    (`raises`), and nothing of it is half-written in `out_root` (neither the prepared folder nor a
    temporary one beside it); returns the message."""
    message = raises(lambda: adapter.prepare(src, out_root), *fragments)
    assert not (Path(out_root) / adapter.NAME).exists()
    assert not list(Path(out_root).glob(f".{adapter.NAME}.*")), sorted(Path(out_root).iterdir())
    return message


def mask_of(sample) -> np.ndarray:
    return np.asarray(Image.open(sample.mask))


def rewrite_nifti(path: Path, change) -> None:
    """Replace a NIfTI volume's voxels with change(voxels), same affine."""
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(change(np.asarray(img.dataobj).copy()), img.affine), str(path))
