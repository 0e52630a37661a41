"""Multi-site prostate adapter quirks (the contract every adapter meets: tests/test_dataset_contract.py):
by-case split (BMC 60/20/20, other sites test), voxel alignment incl. LPS-stored sites, optional
sites, both label spellings, input errors."""
from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medssl_bench.downstream.datasets import prostate
from medssl_bench.downstream.datasets.canonical_seg import load_segmentation_dataset
from medssl_bench.downstream.phantoms.seg_prostate import SITE_STYLES
from medssl_bench.downstream.datasets.options import PrepareOptions
from tests.dataset_helpers import Download, raises, refused

N, SIZE, SEED = 12, 48, 5
DOWNLOAD = Download(prostate, n=N, seed=SEED, size=SIZE)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    return load_segmentation_dataset(prostate.prepare(raw, tmp_path_factory.mktemp("out")))


def _by_case(ds) -> dict[str, list]:
    cases = defaultdict(list)
    for s in ds.samples:
        cases[s.case].append(s)
    return {c: sorted(v, key=lambda s: s.slice) for c, v in cases.items()}


# ----------------------------------------------------------------------------- round trip
def test_raw_layout(raw):
    plan = prostate.plan_sites(N)
    assert sum(plan.values()) == N and plan["BMC"] >= 3 and set(plan) == set(prostate.SITES)
    assert prostate.plan_sites(prostate.DEFAULT_N)["BMC"] >= 6
    assert min(prostate.plan_sites(prostate.DEFAULT_N).values()) >= 2
    names = {p.name for p in raw.rglob("*.nii.gz")}
    assert "Case00_Segmentation.nii.gz" in names and "Case00_segmentation.nii.gz" in names
    flipped = next(s for s in prostate.SITES if SITE_STYLES[s].flip)
    assert nib.load(raw / flipped / "Case00.nii.gz").affine[0, 0] < 0  # stored LPS: must be reoriented
    sides = {nib.load(raw / s / "Case00.nii.gz").shape[0] for s in prostate.SITES}
    assert len(sides) > 1  # sites differ in matrix size


def test_round_trip_and_split(raw, prepared):
    ds, meta = prepared, prepared.meta
    assert ds.kind == "3d" and ds.classes == ["background", "prostate"] and ds.target_classes == [1]
    assert meta["synthetic"] and meta["dataset"] == "prostate" and meta["ignored_files"] == 1
    assert set(ds.domains) == set(prostate.SITES) and meta["sites_missing"] == []
    cases = _by_case(ds)
    plan = prostate.plan_sites(N)
    for site, count in plan.items():
        assert len({c for c in cases if c.startswith(site + "/")}) == count
    for case, slices in cases.items():
        site = case.split("/")[0]
        assert len({s.split for s in slices}) == 1, case  # never split by slice
        assert {s.domain for s in slices} == {site}
        assert [s.slice for s in slices] == list(range(len(slices)))
        assert nib.load(raw / f"{case}.nii.gz").shape[2] == len(slices)
        if site != "BMC":
            assert slices[0].split == "test"
    bmc = {s: len(ds.cases(s, "BMC")) for s in ("train", "val", "test")}
    assert bmc == {"train": plan["BMC"] - 2, "val": 1, "test": 1}
    assert ds.cases("train") == ds.cases("train", "BMC") and not ds.split("val", "HK")


def test_masks_match_the_generator(raw, prepared):
    """Every prepared mask equals the label the phantom drew, LPS-stored sites included, and the
    image slices are the phantom's slices (windowed): image and mask stay voxel-aligned."""
    for case, slices in _by_case(prepared).items():
        site, name = case.split("/")
        image, label, _ = prostate.synthetic_case(SEED, site, int(name[4:]), SIZE)
        masks = np.stack([np.asarray(Image.open(s.mask)) for s in slices], axis=-1)
        assert (2 in label) == (site in prostate.ZONAL_SITES), case  # NCI-ISBI sites: zonal labels
        assert np.array_equal(masks, (label > 0).astype(np.uint8)), case  # 1 and 2 -> prostate
        pixels = np.stack([np.asarray(Image.open(s.image)) for s in slices], axis=-1).astype(float)
        assert np.corrcoef(pixels.ravel(), image.ravel())[0, 1] > 0.95, case
    assert any(np.asarray(Image.open(s.mask)).any() for s in prepared.samples)


def test_optional_sites(tmp_path):
    src = prostate.synthesize(tmp_path / "two", n=5, seed=1, size=40, sites=("BMC", "HK"))
    ds = load_segmentation_dataset(prostate.prepare(src, tmp_path / "o"))
    assert set(ds.domains) == {"BMC", "HK"} and "RUNMC" in ds.meta["sites_missing"]
    assert any("missing: RUNMC" in n for n in ds.meta["notes"])
    assert {s.split for s in ds.samples if s.domain == "HK"} == {"test"}


# ----------------------------------------------------------------------------- errors
def _save(path: Path, data: np.ndarray, like: Path) -> None:
    nib.save(nib.Nifti1Image(data, nib.load(like).affine), path)


def test_bmc_required(src, tmp_path):
    shutil.rmtree(src / "BMC")
    refused(prostate, src, tmp_path / "o", "no BMC/")


def test_label_missing(src, tmp_path):
    (src / "RUNMC" / "Case01_segmentation.nii.gz").unlink()
    refused(prostate, src, tmp_path / "o", "RUNMC/Case01.nii.gz", "label volume missing")


def test_label_without_image(src, tmp_path):
    (src / "HK" / "Case00.nii.gz").unlink()
    refused(prostate, src, tmp_path / "o", "Case00_Segmentation.nii.gz", "without its image")


def test_shape_mismatch_names_both(src, tmp_path):
    label = src / "BMC" / "Case01_segmentation.nii.gz"
    _save(label, np.zeros((20, 20, 5), np.uint8), label)
    refused(prostate, src, tmp_path / "o", "Case01_segmentation.nii.gz", "Case01.nii.gz", "shape")


def test_unknown_label_value(src, tmp_path):
    label = src / "BIDMC" / "Case00_segmentation.nii.gz"
    data = np.asarray(nib.load(label).dataobj).copy()
    data[data == 1] = 3  # a label (3) outside the codebook {0, 1, 2}
    _save(label, data, label)
    raises(lambda: prostate.prepare(src, tmp_path / "o", options=PrepareOptions(strict=True)),
           "BIDMC/Case00_segmentation.nii.gz", "3", "outside the codebook")
    assert not (tmp_path / "o" / prostate.NAME).exists()


def test_unknown_label_value_becomes_background_counted_and_warned(src, tmp_path):
    label = src / "BIDMC" / "Case00_segmentation.nii.gz"
    data = np.asarray(nib.load(label).dataobj).copy()
    n3 = int((data == 1).sum())
    assert n3 > 0
    data[data == 1] = 3
    _save(label, data, label)
    ds = load_segmentation_dataset(prostate.prepare(src, tmp_path / "o"))
    record = ds.meta["unknown_label_codes"]
    assert record["total"] == n3 and record["codes"] == {"3": n3}
    assert list(record["files"]) == [str(label)]
    assert any(f"{n3} voxel(s) in 1 file(s)" in w and "3 (" in w and "background" in w
               for w in ds.meta["warnings"])
    assert not any(np.asarray(Image.open(s.mask)).any() for s in ds.samples if s.case == "BIDMC/Case00")
    assert any("hold no prostate voxel" in w for w in ds.meta["warnings"])


def test_zonal_label_2_is_prostate_and_counted(src, tmp_path):
    """A site volume with labels {0, 1, 2} (NCI-ISBI: 1 central gland, 2 peripheral zone) prepares:
    the prostate mask covers both codes and the remapped voxels are counted in dataset.json."""
    label = src / "BIDMC" / "Case00_segmentation.nii.gz"  # a site without zones in the phantom
    data = np.asarray(nib.load(label).dataobj).copy()
    assert set(np.unique(data)) == {0, 1}
    whole = data > 0
    data[whole & (np.indices(data.shape)[0] % 2 == 0)] = 2  # every other row of the gland: zone 2
    assert set(np.unique(data)) == {0, 1, 2}
    _save(label, data, label)
    n2 = int((data == 2).sum())
    ds = load_segmentation_dataset(prostate.prepare(src, tmp_path / "o"))
    zone2 = ds.meta["zone_label_2_voxels"]
    assert zone2["by_case"]["BIDMC/Case00"] == n2 and zone2["by_site"]["BIDMC"] == n2
    masks = np.stack([np.asarray(Image.open(s.mask)) for s in _by_case(ds)["BIDMC/Case00"]], axis=-1)
    _, expected, _ = prostate.synthetic_case(SEED, "BIDMC", 0, SIZE)
    assert set(np.unique(expected)) == {0, 1}
    assert np.array_equal(masks, expected) and int(masks.sum()) == int(whole.sum())  # 1s and 2s: prostate
    assert ds.meta["label_codes"]["prostate"] == [1, 2] and ds.meta["unknown_label_codes"]["total"] == 0
    assert any("label 2" in n and "as SAML" in n for n in ds.meta["notes"])


def test_synthetic_nci_isbi_sites_write_zone_2(raw, prepared):
    """RUNMC and BMC (from NCI-ISBI 2013) store 2s as the real release does; the count in
    dataset.json is the number of 2-voxels in their label files, per case."""
    zone2, by_case = prepared.meta["zone_label_2_voxels"], {}
    for site in prostate.SITES:
        for path in sorted((raw / site).glob("*_[sS]egmentation.nii.gz")):
            n = int((np.asarray(nib.load(path).dataobj) == 2).sum())
            assert (n > 0) == (site in prostate.ZONAL_SITES), path
            if n:
                by_case[f"{site}/{path.name.split('_')[0]}"] = n
    assert zone2["by_case"] == by_case and zone2["total"] == sum(by_case.values())
    assert set(zone2["by_site"]) == {"RUNMC", "BMC"} and prepared.meta["unknown_label_codes"]["total"] == 0


def test_empty_and_unreadable_volumes(src, tmp_path):
    image = src / "UCL" / "Case00.nii.gz"
    _save(image, np.zeros(nib.load(image).shape, np.int16), image)
    refused(prostate, src, tmp_path / "o", "UCL/Case00.nii.gz", "empty")
    (src / "I2CVB" / "Case00.nii.gz").write_bytes(b"garbage")
    refused(prostate, src, tmp_path / "o", "I2CVB/Case00.nii.gz", "unreadable")


def test_two_label_spellings(src, tmp_path):
    bmc = src / "BMC"
    shutil.copy(bmc / "Case00_segmentation.nii.gz", bmc / "Case00_Segmentation.nii.gz")
    refused(prostate, src, tmp_path / "o", "Case00", "two label volumes")


def test_bad_requests(tmp_path):
    for call in (lambda: prostate.prepare(tmp_path / "nowhere", tmp_path / "o"),
                 lambda: prostate.prepare(tmp_path, tmp_path / "o"),
                 lambda: prostate.synthesize(tmp_path / "s", n=3),
                 lambda: prostate.synthesize(tmp_path / "s", sites=("HK", "UCL"))):
        raises(call)
