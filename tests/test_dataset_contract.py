"""The dataset-adapter contract (downstream.datasets.Adapter), checked for every registered adapter
(ADAPTERS, and the pretraining-only LABELLED_ADAPTERS): synthesize the raw layout -> prepare -> the task family's loader reads it, with
train/val/test and the registry's classes; the same seed gives the same bytes and the same content
hash, another seed other data; a truncated or corrupt input file is refused with one line naming
it, and the data root keeps its earlier copy untouched (nothing half-written); synthesize refuses
what it cannot write. The tests/test_datasets_*.py files test each dataset's quirks only."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medssl_bench.downstream.datasets import ADAPTERS, LABELLED_ADAPTERS, Adapter
from medssl_bench.downstream.datasets.canonical import SPLITS, SYNTHETIC_MARKER
from medssl_bench.downstream.families import get_family
from medssl_bench.downstream.registry import TASKS
from tests.dataset_helpers import file_digests, raises

#: (n, size) per adapter: about the smallest synthetic set that still fills train, val and test
#: (speed only; an adapter missing here runs at its defaults).
SMALL = {"fgadr": (20, 32), "brain_tumor": (16, 32), "isic2018": (8, 32), "jsrt": (8, 32), "kvasir_seg": (8, 32),
         "drive": (8, 32), "busi": (16, 32), "brats": (3, 32), "mmwhs_ct": (3, 32), "mmwhs_mri": (3, 32),
         "prostate": (8, 32), "vindr_cxr": (24, 64), "kvasir_det": (8, 32), "bccd": (12, 64),
         "cxr_findings": (28, 48)}
#: per adapter, a raw file its prepare must read (the first match in sorted order): images, masks,
#: label volumes and raw formats alike. A new adapter must add one here.
READ = {"fgadr": "Seg-set/Original_Images/*.png", "brain_tumor": "Training/*/*.jpg",
        "isic2018": "ISIC2018_Task1_Training_GroundTruth/*.png", "jsrt": "All247images/*.IMG",
        "kvasir_seg": "Kvasir-SEG/masks/*.jpg", "drive": "DRIVE/training/images/*.tif",
        "busi": "Dataset_BUSI_with_GT/benign/*_mask.png", "brats": "*/*/*_seg.nii.gz",
        "mmwhs_ct": "ct_train/*_image.nii.gz", "mmwhs_mri": "mr_train/*_label.nii.gz",
        "prostate": "BMC/*_segmentation.nii.gz", "vindr_cxr": "train/*.dicom",
        "kvasir_det": "Kvasir-SEG/images/*.jpg", "bccd": "BCCD/JPEGImages/*.jpg",
        "cxr_findings": "CheXpert-v1.0-small/train/*/*/*.jpg"}
ALL = {**ADAPTERS, **LABELLED_ADAPTERS}
NAMES = sorted(ALL)
SEED = 3


def _options(name: str) -> dict:
    n, size = SMALL.get(name, (ALL[name].DEFAULT_N, None))
    return {"n": n, **({"size": size} if size else {})}


def _tasks(name: str) -> list:
    return [t for t in TASKS.values() if t.dataset == name]


def _load(name: str, folder: Path):
    return get_family(_tasks(name)[0].family if _tasks(name) else "classification").load(folder)


def _n_samples(data) -> int:
    return len(data.rows) if hasattr(data, "rows") else len(data.samples)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`built(name)`: (raw download, its prepared folder) of adapter `name` at seed SEED, written
    once per test module (and xdist worker) and only read by the tests."""
    made: dict[str, tuple[Path, Path, list]] = {}

    def build(name: str) -> tuple[Path, Path, list]:
        if name not in made:
            root, adapter, calls = tmp_path_factory.mktemp(name), ALL[name], []
            raw = adapter.synthesize(root / "raw", seed=SEED, **_options(name))
            folder = adapter.prepare(raw, root / "data", progress=lambda done, total: calls.append((done, total)))
            made[name] = raw, folder, calls
        return made[name]

    return build


def test_every_registered_dataset_has_an_adapter():
    assert set(ADAPTERS) == {t.dataset for t in TASKS.values()}
    assert set(SMALL) == set(READ) == set(ALL) and not set(ADAPTERS) & set(LABELLED_ADAPTERS)


@pytest.mark.parametrize("name", NAMES)
def test_follows_the_protocol(name):
    adapter = ALL[name]
    assert isinstance(adapter, Adapter) and adapter.NAME == name
    assert isinstance(adapter.LAYOUT, str) and adapter.LAYOUT and "\n" not in adapter.LAYOUT
    assert isinstance(adapter.DEFAULT_N, int) and adapter.DEFAULT_N > 0
    assert len(set(adapter.CLASSES)) == len(adapter.CLASSES) and all(isinstance(c, str) for c in adapter.CLASSES)
    for task in _tasks(name):  # the registry's class count is the adapter's
        assert len(adapter.CLASSES) == task.classes, task.name


@pytest.mark.parametrize("name", NAMES)
def test_synthesize_prepare_load(built, name):
    raw, folder, calls = built(name)
    marker = json.loads((raw / SYNTHETIC_MARKER).read_text())
    assert marker["seed"] == SEED and marker["n"] == _options(name)["n"]
    assert folder == raw.parent / "data" / name and folder.is_dir()
    assert sorted(p.name for p in folder.parent.iterdir()) == [name]  # no temporary folder left
    data = _load(name, folder)
    assert data.classes == ALL[name].CLASSES and data.meta["synthetic"] is True
    assert len(data.meta["content_hash"]) == 64
    assert all(len(data.split(split)) > 0 for split in SPLITS), {s: len(data.split(s)) for s in SPLITS}
    total = _n_samples(data)
    assert calls[0] == (0, total) and calls[-1] == (total, total)  # progress, total known up front


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_data_other_seed_other_data(built, name, tmp_path):
    raw, folder, _ = built(name)
    adapter = ALL[name]
    again = adapter.synthesize(tmp_path / "again", seed=SEED, **_options(name))
    assert file_digests(again) == file_digests(raw)
    twice = adapter.prepare(again, tmp_path / "data")
    assert file_digests(twice, skip=("dataset.json",)) == file_digests(folder, skip=("dataset.json",))
    meta, meta2 = (json.loads((f / "dataset.json").read_text()) for f in (folder, twice))
    assert {k: v for k, v in meta.items() if k not in ("created", "source")} == \
        {k: v for k, v in meta2.items() if k not in ("created", "source")}
    other = adapter.synthesize(tmp_path / "other", seed=SEED + 1, **_options(name))
    assert file_digests(other) != file_digests(raw)
    other_meta = _load(name, adapter.prepare(other, tmp_path / "data-other")).meta
    assert other_meta["content_hash"] != meta["content_hash"]


@pytest.mark.parametrize("damage", ["truncated", "not an image"])
@pytest.mark.parametrize("name", NAMES)
def test_damaged_file_is_refused_and_nothing_is_written(built, name, damage, tmp_path):
    raw, _, _ = built(name)
    adapter = ALL[name]
    data = tmp_path / "data"
    earlier = file_digests(adapter.prepare(raw, data))
    src = Path(shutil.copytree(raw, tmp_path / "src"))
    victim = sorted(src.glob(READ[name]))[0]
    content = victim.read_bytes()
    victim.write_bytes(content[: len(content) // 2] if damage == "truncated" else b"not an image at all")
    raises(lambda: adapter.prepare(src, data), str(victim))  # one line, naming the file
    assert sorted(p.name for p in data.iterdir()) == [name]  # no temporary folder left
    assert file_digests(data / name) == earlier  # the earlier copy is untouched


@pytest.mark.parametrize("name", NAMES)
def test_synthesize_refuses_what_it_cannot_write(name, tmp_path):
    adapter = ALL[name]
    raises(lambda: adapter.synthesize(tmp_path / "tiny", n=1), "n=1")
    real = tmp_path / "real"
    real.mkdir()
    (real / "image.png").write_bytes(b"someone's data")
    raises(lambda: adapter.synthesize(real, seed=SEED, **_options(name)), str(real), "not an earlier synthetic")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"] and (real / "image.png").is_file()
