"""Real medical images for the tests, taken from the wheels of four PyPI packages.

`real_data_root()` fetches the wheels of pydicom-data, nilearn, scikit-image and stardist with
`pip download --no-deps` (the registry only; the packages are never installed and none of their
dependencies is wanted), and unpacks only their image files into a corpus root:

    pydicom_data/*.dcm        68 DICOM files: CT, MR, CR, US, NM scenes, several encodings each, and
                              two DICOM-SEG masks (MIT)
    mni152/*.nii.gz           the MNI ICBM152 2009a T1 template, 197 x 233 x 189 at 1 mm (nilearn)
    skimage_fundus/           retina.jpg (fundus photo) and microaneurysms.png (scikit-image, CC0)
    skimage_ihc/ihc.png       colon immunohistochemistry (scikit-image)
    stardist_nuclei/img2d.tif fluorescence nuclei, uint16 (stardist; 2018 Data Science Bowl)

Each folder has a dataset.json with "synthetic": false and its modality. pydicom_data's gives none:
it mixes modalities, and each file's DICOM Modality tag says which. What the wheels hold:
docs/datasets.md, "Small real images without a download". pydicom's own get_testdata_files() (the
plural, a glob) must not be used: it tries to download every external file and hangs offline.

Wheels and the unpacked root are cached under <repo>/.cache/realdata (git-ignored; override with
MEDSSL_REALDATA_CACHE), so only the first run downloads (~62 MB). Without a registry,
RealDataUnavailable says why and the conftest fixture skips the tests that need it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

WHEELS = {"pydicom-data": "1.0.0", "nilearn": "0.14.1", "scikit-image": "0.26.0", "stardist": "0.9.2"}
DOWNLOAD_TIMEOUT_S = 900

# (wheel, member path inside it or a folder prefix ending in "/" with a suffix) -> dataset folder
MEMBERS = [
    ("pydicom-data", "data_store/data/", ".dcm", "pydicom_data"),
    ("nilearn", "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "", "mni152"),
    ("scikit-image", "skimage/data/retina.jpg", "", "skimage_fundus"),
    ("scikit-image", "skimage/data/microaneurysms.png", "", "skimage_fundus"),
    ("scikit-image", "skimage/data/ihc.png", "", "skimage_ihc"),
    ("stardist", "stardist/data/images/img2d.tif", "", "stardist_nuclei"),
]
DATASETS = {
    "pydicom_data": {"synthetic": False},
    "mni152": {"modality": "mr", "synthetic": False},
    "skimage_fundus": {"modality": "fundus", "synthetic": False},
    "skimage_ihc": {"modality": "histology", "synthetic": False},
    "stardist_nuclei": {"modality": "micro", "synthetic": False},
}


class RealDataUnavailable(Exception):
    """The wheels could not be fetched (no network, registry down): the reason, for pytest.skip."""


def cache_dir() -> Path:
    default = Path(__file__).resolve().parents[1] / ".cache" / "realdata"
    return Path(os.environ.get("MEDSSL_REALDATA_CACHE") or default)


def real_data_root() -> Path:
    """The unpacked corpus root (see the module docstring); fetched and unpacked on first use. A
    file lock keeps parallel pytest workers from downloading or unpacking twice."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps([WHEELS, MEMBERS, DATASETS], sort_keys=True).encode()).hexdigest()[:10]
    root, done = cache / f"root-{key}", cache / f"root-{key}.done"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            wheels = _download(cache / "wheels")
            _unpack(wheels, root)
            done.write_text("unpacked\n")
    return root


def _wheel_file(folder: Path, name: str, version: str) -> Path | None:
    # Wheel file names spell the project with underscores (scikit_image-0.26.0-cp311-...whl).
    matches = sorted(folder.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return matches[0] if matches else None


def _download(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    missing = [f"{name}=={version}" for name, version in WHEELS.items() if _wheel_file(folder, name, version) is None]
    if missing:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "--retries", "2", "--timeout", "30",
                   "-d", str(folder), *missing]  # offline: fail in seconds, not pip's minutes of retries
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RealDataUnavailable(f"pip download of {' '.join(missing)} took over {DOWNLOAD_TIMEOUT_S} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RealDataUnavailable(f"pip download of {' '.join(missing)} failed (no registry?): {last}")
    wheels = {name: _wheel_file(folder, name, version) for name, version in WHEELS.items()}
    absent = [name for name, path in wheels.items() if path is None]
    if absent:
        raise RealDataUnavailable(f"pip download gave no wheel for {', '.join(absent)} in {folder}")
    return wheels


def _unpack(wheels: dict[str, Path], root: Path) -> None:
    """Only the listed image files, flat into their dataset folder; unpacked beside the final
    folder and renamed into place, so an interrupted run never leaves half a root behind."""
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for wheel, member, suffix, dataset in MEMBERS:
        with zipfile.ZipFile(wheels[wheel]) as archive:
            names = [n for n in archive.namelist()
                     if (n.startswith(member) and n.endswith(suffix) if member.endswith("/") else n == member)]
            if not names:
                raise RealDataUnavailable(f"{wheels[wheel].name} has no {member}{suffix}: another build?")
            target = partial / dataset
            target.mkdir(parents=True, exist_ok=True)
            for name in names:
                with archive.open(name) as src, open(target / Path(name).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    for dataset, meta in DATASETS.items():
        (partial / dataset / "dataset.json").write_text(json.dumps(meta, sort_keys=True) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
