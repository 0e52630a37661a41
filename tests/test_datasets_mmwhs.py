"""MM-WHS CT/MRI adapter quirks (the contract every adapter meets: tests/test_dataset_contract.py):
masks equal the phantom's labels, LVM-Med's published split vs the seeded one, the raw file names,
both modalities in one download, the stray 421 code, and every bad input."""
from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medssl_bench.downstream.datasets import mmwhs
from medssl_bench.downstream.datasets.mmwhs import CT as mmwhs_ct, MRI as mmwhs_mri
from medssl_bench.downstream.datasets.canonical_seg import load_segmentation_dataset, volume_to_uint8
from medssl_bench.downstream.datasets.options import PrepareOptions
from tests.dataset_helpers import (
    Download, file_digests as _files, mask_of as _mask, raises as _raises, rewrite_nifti as _rewrite)

N, SIZE, SEED = 4, 32, 1
ADAPTERS = {"ct": mmwhs_ct, "mr": mmwhs_mri}
DOWNLOAD = {p: Download(a, n=N, seed=SEED, size=SIZE, folder=a.NAME) for p, a in ADAPTERS.items()}


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return {p: load_segmentation_dataset(a.prepare(raw[p], out)) for p, a in ADAPTERS.items()}


def _expected(codes: np.ndarray) -> np.ndarray:
    out = np.zeros(codes.shape, np.uint8)
    for code, index in mmwhs.CODEBOOK.items():
        out[codes == code] = index
    return out


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("p", ["ct", "mr"])
def test_round_trip_counts_split_and_metadata(prepared, raw, p):
    ds, adapter = prepared[p], ADAPTERS[p]
    assert (ds.name, ds.kind, ds.classes) == (adapter.NAME, "3d", mmwhs.CLASSES)
    assert ds.target_classes == [2] and ds.classes[2] == "left_atrium" and ds.meta["synthetic"] is True
    assert ds.meta["label_codes"]["left_atrium"] == [420] and ds.meta["unlabelled_test_volumes"] == 2
    assert "seeded by volume" in ds.meta["split"]["method"]  # 1001-1004 are not the published 20
    assert [len(ds.cases(s)) for s in ("train", "val", "test")] == [2, 1, 1]
    ids = ds.meta["volume_ids"]
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == [1001, 1002, 1003, 1004]
    depths = {f"{p}_train_{v}": nib.load(str(raw[p] / f"{p}_train" / f"{p}_train_{v}_image.nii.gz")).shape[2]
              for v in range(1001, 1001 + N)}
    assert len(ds.samples) == sum(depths.values())
    for case, depth in depths.items():
        rows = [s for s in ds.samples if s.case == case]
        assert len({s.split for s in rows}) == 1, case  # a volume never straddles splits
        assert sorted(s.slice for s in rows) == list(range(depth))


@pytest.mark.parametrize("p", ["ct", "mr"])
def test_masks_and_images_equal_the_phantom(prepared, p):
    image, codes, depth = mmwhs.synthetic_volume(p, SEED, "1002", SIZE)
    expected, pixels = _expected(codes), volume_to_uint8(image.astype(np.float32))
    rows = sorted((s for s in prepared[p].samples if s.case == f"{p}_train_1002"), key=lambda s: s.slice)
    assert len(rows) == depth and (expected == 2).any()
    for s in rows:
        assert np.array_equal(_mask(s), expected[:, :, s.slice]), s.id
        assert np.array_equal(np.asarray(Image.open(s.image)), pixels[:, :, s.slice]), s.id


def test_class_voxel_counts_match_the_raw_label_files(prepared, raw):
    """Decoded independently (nibabel, no reorientation): per-code voxel counts = per-class counts."""
    for p, ds in prepared.items():
        for path in sorted((raw[p] / f"{p}_train").glob("*_label.nii.gz")):
            codes = np.asarray(nib.load(str(path)).dataobj)
            assert set(np.unique(codes)) == set(mmwhs.CODEBOOK), path.name  # all 7 structures drawn
            case = path.name.replace("_label.nii.gz", "")
            masks = np.stack([_mask(s) for s in ds.samples if s.case == case])
            for code, index in mmwhs.CODEBOOK.items():
                assert int((codes == code).sum()) == int((masks == index).sum()), (path.name, code)


def test_published_split_with_the_standard_twenty_ids(tmp_path):
    src = mmwhs_ct.synthesize(tmp_path / "ct20", n=20, seed=SEED, size=SIZE)
    ds = load_segmentation_dataset(mmwhs_ct.prepare(src, tmp_path / "out", seed=5))
    assert "published" in ds.meta["split"]["method"]
    assert {s: tuple(v) for s, v in ds.meta["volume_ids"].items()} == mmwhs.PUBLISHED_SPLIT
    assert [len(ds.cases(s)) for s in ("train", "val", "test")] == [13, 3, 4]
    assert set(ds.cases("test")) == {"ct_train_1002", "ct_train_1010", "ct_train_1012", "ct_train_1019"}
    # One volume short of the 20: the published ids no longer apply -> seeded split.
    for f in (src / "ct_train").glob("ct_train_1020_*"):
        f.unlink()
    ds19 = load_segmentation_dataset(mmwhs_ct.prepare(src, tmp_path / "out19"))
    assert "seeded by volume" in ds19.meta["split"]["method"] and len(ds19.cases("train")) == 12


def test_raw_file_names(raw):
    assert sorted(_files(raw["ct"])) == sorted(
        [f"ct_train/ct_train_{v}_{k}.nii.gz" for v in range(1001, 1005) for k in ("image", "label")]
        + ["ct_test/ct_test_2001_image.nii.gz", "ct_test/ct_test_2002_image.nii.gz", ".bench-synthetic.json"])


def test_both_modalities_in_one_download(raw, tmp_path):
    root = tmp_path / "MM-WHS 2017 Dataset"
    for p in ("ct", "mr"):
        shutil.copytree(raw[p] / f"{p}_train", root / f"{p}_train")
    for p, adapter in ADAPTERS.items():
        ds = load_segmentation_dataset(adapter.prepare(tmp_path, tmp_path / "out"))  # one wrapper folder
        assert {s.case[:3] for s in ds.samples} == {f"{p}_"} and ds.meta["source"]["modality"] == p
    shutil.rmtree(root / "ct_train")
    _raises(lambda: mmwhs_ct.prepare(root, tmp_path / "out"), "no ct_train/", "mmwhs_mri")


def test_stray_421_becomes_background_with_a_warning(src, tmp_path):
    src = src("mr")
    label = src / "mr_train" / "mr_train_1003_label.nii.gz"
    codes = np.asarray(nib.load(str(label)).dataobj)
    edge = np.argwhere(codes == 420)[:5]
    _rewrite(label, lambda v: (v.__setitem__(tuple(edge.T), 421), v)[1])
    ds = load_segmentation_dataset(mmwhs_mri.prepare(src, tmp_path / "out"))
    assert any("mr_train_1003_label.nii.gz: 5 voxel(s) with the stray code 421" in w for w in ds.meta["warnings"])
    masks = np.stack([_mask(s) for s in ds.samples if s.case == "mr_train_1003"])
    assert int((masks == 2).sum()) == int((codes == 420).sum()) - 5


# ----------------------------------------------------------------------------- bad inputs
def test_image_without_label_and_label_without_image(src, tmp_path):
    ct = src("ct")
    (ct / "ct_train" / "ct_train_1002_label.nii.gz").unlink()
    _raises(lambda: mmwhs_ct.prepare(ct, tmp_path / "out"), "ct_train_1002_image.nii.gz",
            "without its label", "ct_train_1002_label.nii.gz")
    (ct / "ct_train" / "ct_train_1002_image.nii.gz").unlink()
    (ct / "ct_train" / "ct_train_1003_image.nii.gz").unlink()
    _raises(lambda: mmwhs_ct.prepare(ct, tmp_path / "out"), "ct_train_1003_label.nii.gz", "without its image")
    assert not (tmp_path / "out" / "mmwhs_ct").exists()


def test_shape_mismatch_names_both_files(src, tmp_path):
    ct = src("ct")
    _rewrite(ct / "ct_train" / "ct_train_1004_label.nii.gz", lambda v: v[:, :, :-1])
    _raises(lambda: mmwhs_ct.prepare(ct, tmp_path / "out"), "ct_train_1004_image.nii.gz",
            "ct_train_1004_label.nii.gz", "voxel-aligned")
    assert not (tmp_path / "out" / "mmwhs_ct").exists()  # nothing half-written


def test_code_outside_codebook(src, tmp_path):
    ct = src("ct")
    _rewrite(ct / "ct_train" / "ct_train_1001_label.nii.gz", lambda v: np.where(v == 850, 300, v).astype(np.int16))
    _raises(lambda: mmwhs_ct.prepare(ct, tmp_path / "out", options=PrepareOptions(strict=True)),
            "ct_train_1001_label.nii.gz", "label value(s) 300")
    assert not (tmp_path / "out" / "mmwhs_ct").exists()


def test_unknown_code_becomes_background_counted_and_warned(src, tmp_path):
    ct = src("ct")
    label = ct / "ct_train" / "ct_train_1001_label.nii.gz"
    codes = np.asarray(nib.load(str(label)).dataobj)
    n300 = int((codes == 850).sum())
    assert n300 > 0
    _rewrite(label, lambda v: np.where(v == 850, 300, v).astype(np.int16))
    ds = load_segmentation_dataset(mmwhs_ct.prepare(ct, tmp_path / "out"))
    record = ds.meta["unknown_label_codes"]
    assert record["total"] == n300 and record["codes"] == {"300": n300}
    assert list(record["files"].values()) == [n300] and next(iter(record["files"])).endswith(label.name)
    assert any(f"{n300} voxel(s) in 1 file(s)" in w and "300" in w and "background" in w
               for w in ds.meta["warnings"])
    masks = np.stack([_mask(s) for s in sorted((s for s in ds.samples if s.case == "ct_train_1001"),
                                               key=lambda s: s.slice)], axis=-1)
    _, phantom, _ = mmwhs.synthetic_volume("ct", SEED, "1001", SIZE)  # the labels in read_nifti's orientation
    expected = _expected(np.where(phantom == 850, 0, phantom))
    assert masks.shape == expected.shape and np.array_equal(masks, expected)
    assert int((masks == 7).sum()) == 0  # pulmonary artery (850) became unknown -> background


def test_empty_image_volume(src, tmp_path):
    ct = src("ct")
    _rewrite(ct / "ct_train" / "ct_train_1003_image.nii.gz", np.zeros_like)
    _raises(lambda: mmwhs_ct.prepare(ct, tmp_path / "out"), "ct_train_1003_image.nii.gz", "empty")


def test_wrong_modality_file_and_strays(src, tmp_path):
    ct = src("ct")
    (ct / "ct_train" / "readme.txt").write_text("MM-WHS 2017\n")
    ds = load_segmentation_dataset(mmwhs_ct.prepare(ct, tmp_path / "out"))
    assert ds.meta["ignored_files"] == 1
    (ct / "ct_train" / "ct_train_1001_label.nii.gz").rename(ct / "ct_train" / "mr_train_1001_label.nii.gz")
    _raises(lambda: mmwhs_ct.prepare(ct, tmp_path / "out"), "mr_train_1001_label.nii.gz", "MR volume in the CT")


def test_unreadable_volume_and_missing_folder(src, tmp_path):
    ct = src("ct")
    (ct / "ct_train" / "ct_train_1001_image.nii.gz").write_bytes(b"\x1f\x8b garbage")
    _raises(lambda: mmwhs_ct.prepare(ct, tmp_path / "out"), "ct_train_1001_image.nii.gz", "unreadable")
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises(lambda: mmwhs_ct.prepare(empty, tmp_path / "out"), str(empty), "no ct_train/")
    (empty / "ct_train").mkdir()
    _raises(lambda: mmwhs_ct.prepare(empty, tmp_path / "out"), "ct_train", "no ct_train_<id>_image/label")


def test_synthesize_rejects_bad_requests(tmp_path):
    _raises(lambda: mmwhs_mri.synthesize(tmp_path / "a", n=2, size=SIZE), "n=2")
    _raises(lambda: mmwhs_ct.synthesize(tmp_path / "b", n=N, size=16), "size=16")


# ----------------------------------------------------------------------------- normalisation
def _lvmmed_reference(volume: np.ndarray) -> np.ndarray:
    """LVM-Med's datasets_split/MMWHS_CT_Heart_split.py, as written there (per volume, float64)."""
    image = np.asarray(volume, dtype=np.float64).copy()
    top_per, bot_per = np.percentile(image, 99.5), np.percentile(image, 0.5)
    image[image > top_per] = top_per
    image[image < bot_per] = bot_per
    image = (image - np.mean(image)) / np.std(image)
    image = image / 10.0
    image[image < 0] = 0.0
    image[image > 1] = 1.0
    return (image * 255).astype("uint8")


@pytest.mark.parametrize("p", ["ct", "mr"])
def test_lvmmed_normalisation_equals_the_hand_computed_mapping(src, tmp_path, p):
    src = src(p)
    image_path = src / f"{p}_train" / f"{p}_train_1002_image.nii.gz"

    def two_values(v):  # half the voxels 0, half 100: percentiles 0 / 100, mean 50, std 50
        v[...] = 0
        v[::2] = 100
        return v
    _rewrite(image_path, two_values)
    ds = load_segmentation_dataset(mmwhs.prepare(src, tmp_path / "out", modality=p, name=ADAPTERS[p].NAME,
                                                 options=PrepareOptions(normalisation="lvmmed")))
    assert ds.meta["normalisation"]["name"] == "lvmmed" and "z-score" in ds.meta["normalisation"]["description"]
    rows = [s for s in ds.samples if s.case == f"{p}_train_1002"]
    # z = -1 -> /10 -0.1 -> clipped 0 -> 0; z = +1 -> 0.1 -> 25.5 -> truncated to 25 (LVM-Med's astype)
    for s in rows:
        pixels = np.asarray(Image.open(s.image))
        assert set(np.unique(pixels)) == {0, 25}, s.id
    # every other volume: LVM-Med's function, verbatim, on the whole volume
    image, _, _ = mmwhs.synthetic_volume(p, SEED, "1003", SIZE)
    expected = _lvmmed_reference(nib.load(str(src / f"{p}_train" / f"{p}_train_1003_image.nii.gz")).get_fdata())
    assert expected.shape == image.shape
    pixels = np.stack([np.asarray(Image.open(s.image)) for s in
                       sorted((s for s in ds.samples if s.case == f"{p}_train_1003"), key=lambda s: s.slice)], axis=2)
    assert np.array_equal(pixels, _lvmmed_reference(image)) and pixels.max() > 0
    default = load_segmentation_dataset(ADAPTERS[p].prepare(src, tmp_path / "default"))
    assert default.meta["normalisation"]["name"] == "window"
    assert default.meta["content_hash"] != ds.meta["content_hash"]


def test_lvmmed_normalisation_is_refused_elsewhere(tmp_path):
    from medssl_bench.downstream.datasets import ADAPTERS as ALL

    _raises(lambda: ALL["isic2018"].prepare(tmp_path, tmp_path / "out", options=PrepareOptions(normalisation="lvmmed")),
            "--normalisation lvmmed is not supported for isic2018")
    _raises(lambda: mmwhs_ct.prepare(tmp_path, tmp_path / "out", options=PrepareOptions(normalisation="zscore")),
            "unknown --normalisation 'zscore'")

