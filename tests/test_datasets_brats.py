"""BraTS adapter quirks (the contract every adapter meets: tests/test_dataset_contract.py): masks
equal the phantom's labels, split by case, other releases' naming, and every bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medssl_bench.downstream.datasets import brats
from medssl_bench.downstream.datasets.canonical_seg import load_segmentation_dataset, volume_to_uint8
from tests.dataset_helpers import Download, raises as _raises, mask_of as _mask, rewrite_nifti as _rewrite

N, SIZE, SEED = 4, 32, 1
DOWNLOAD = Download(brats, n=N, seed=SEED, size=SIZE, folder="MICCAI_BraTS_2018_Data_Training")  # {HGG,LGG}/...


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    return load_segmentation_dataset(brats.prepare(raw.parent, tmp_path_factory.mktemp("out")))  # found below src


def _case_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("*_seg.nii.gz"))


# ----------------------------------------------------------------------------- round trip
def test_round_trip_counts_split_and_metadata(prepared, raw):
    ds, cases = prepared, _case_dirs(raw)
    assert (ds.name, ds.kind, ds.classes) == ("brats", "3d", brats.CLASSES)
    assert ds.target_classes == [1, 2, 3] and ds.meta["synthetic"] is True
    assert ds.meta["label_codes"]["enhancing"] == [4] and ds.meta["input_modality"] == "flair"
    assert ds.meta["ignored_files"] == 1  # survival_data.csv
    assert ds.meta["unused_modality_files"] == 3 * N
    assert sum(ds.meta["grades"].values()) == N and set(ds.meta["grades"]) == {"HGG", "LGG"}
    assert [len(ds.cases(s)) for s in ("train", "val", "test")] == [2, 1, 1]  # 70/10/20 of 4, one each at least
    depths = {c.name: nib.load(str(c / f"{c.name}_flair.nii.gz")).shape[2] for c in cases}
    assert len(ds.samples) == sum(depths.values())
    for case, depth in depths.items():
        rows = [s for s in ds.samples if s.case == case]
        assert len({s.split for s in rows}) == 1, case  # a volume never straddles splits
        assert sorted(s.slice for s in rows) == list(range(depth))


def test_masks_and_images_equal_the_phantom(prepared):
    """Case 0 (the first HGG case) regenerated from its seed: every slice's mask is the phantom's
    label map (codes 1, 2, 4 -> 1, 2, 3) and the image its FLAIR volume windowed once."""
    case = brats._case_name(True, 0, np.random.default_rng([SEED, brats._TAG, 0]))
    images, seg, depth = brats.synthetic_volume(SEED, 0, SIZE, True)
    expected = np.select([seg == 1, seg == 2, seg == 4], [1, 2, 3], 0).astype(np.uint8)
    flair = volume_to_uint8(images["flair"].astype(np.float32))
    rows = sorted((s for s in prepared.samples if s.case == case), key=lambda s: s.slice)
    assert len(rows) == depth and expected.any()
    for s in rows:
        assert np.array_equal(_mask(s), expected[:, :, s.slice]), s.id
        assert np.array_equal(np.asarray(Image.open(s.image)), flair[:, :, s.slice]), s.id


def test_class_voxel_counts_match_the_raw_seg_files(prepared, raw):
    """Decoded independently (nibabel, no reorientation): per-code voxel counts = per-class counts."""
    for folder in _case_dirs(raw):
        codes = np.asarray(nib.load(str(folder / f"{folder.name}_seg.nii.gz")).dataobj)
        assert set(np.unique(codes)) <= {0, 1, 2, 4}
        masks = np.stack([_mask(s) for s in prepared.samples if s.case == folder.name])
        for code, cls in ((1, 1), (2, 2), (4, 3)):
            assert int((codes == code).sum()) == int((masks == cls).sum()), (folder.name, code)


def test_split_seed_is_recorded(raw, tmp_path):
    resplit = load_segmentation_dataset(brats.prepare(raw, tmp_path / "out2", seed=7))
    assert resplit.meta["split"]["seed"] == 7 and "seeded by case" in resplit.meta["split"]["method"]


def test_brats2021_flat_folders_and_2023_names(src, prepared, tmp_path):
    flat = tmp_path / "BraTS2021_Training_Data"
    flat.mkdir()
    for folder in _case_dirs(src):
        shutil.move(str(folder), flat / folder.name)
    ds = load_segmentation_dataset(brats.prepare(flat, tmp_path / "out21"))
    assert ds.meta["content_hash"] == prepared.meta["content_hash"] and ds.meta["grades"] == {"none": N}
    # BraTS 2023: <case>-{t1c,t1n,t2f,t2w,seg}, enhancing tumour labelled 3.
    rename = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}
    for k, folder in enumerate(_case_dirs(flat)):
        case = f"BraTS-GLI-{k:05d}-000"
        new = flat / case
        new.mkdir()
        for old, suffix in rename.items():
            (folder / f"{folder.name}_{old}.nii.gz").rename(new / f"{case}-{suffix}.nii.gz")
        _rewrite(new / f"{case}-seg.nii.gz", lambda v: np.where(v == 4, 3, v).astype(np.uint8))
        folder.rmdir()
    ds23 = load_segmentation_dataset(brats.prepare(flat, tmp_path / "out23"))
    assert ds23.meta["source"]["naming"] == "2023" and ds23.meta["label_codes"]["enhancing"] == [3]
    count = lambda d: np.bincount(np.concatenate([_mask(s).ravel() for s in d.samples]), minlength=4)  # noqa: E731
    assert np.array_equal(count(ds23), count(prepared))
    seg = next(flat.rglob("*-seg.nii.gz"))
    _rewrite(seg, lambda v: np.where(v == 3, 4, v).astype(np.uint8))  # 2018 code in a 2023 file
    _raises(lambda: brats.prepare(flat, tmp_path / "bad"), seg.name, "outside the codebook")


# ----------------------------------------------------------------------------- bad inputs
def test_missing_seg_or_modality(src, tmp_path):
    folder = _case_dirs(src)[0]
    (folder / f"{folder.name}_flair.nii.gz").unlink()
    _raises(lambda: brats.prepare(src, tmp_path / "out"), f"{folder.name}_flair.nii.gz", "input modality")
    shutil.rmtree(folder)
    folder = _case_dirs(src)[0]
    (folder / f"{folder.name}_seg.nii.gz").unlink()
    _raises(lambda: brats.prepare(src, tmp_path / "out"), f"{folder.name}_seg.nii.gz", "no segmentation")
    assert not (tmp_path / "out" / "brats").exists()


def test_shape_mismatch_names_both_files(src, tmp_path):
    folder = _case_dirs(src)[1]
    _rewrite(folder / f"{folder.name}_seg.nii.gz", lambda v: v[:, :-2])
    message = _raises(lambda: brats.prepare(src, tmp_path / "out"), f"{folder.name}_flair.nii.gz",
                      f"{folder.name}_seg.nii.gz", "voxel-aligned")
    assert "\n" not in message
    assert not (tmp_path / "out" / "brats").exists()  # nothing half-written


def test_label_outside_codebook(src, tmp_path):
    folder = _case_dirs(src)[0]
    _rewrite(folder / f"{folder.name}_seg.nii.gz", lambda v: np.where(v == 4, 3, v).astype(np.uint8))
    _raises(lambda: brats.prepare(src, tmp_path / "out"), f"{folder.name}_seg.nii.gz", "label value(s) 3")


def test_empty_image_volume(src, tmp_path):
    folder = _case_dirs(src)[2]
    _rewrite(folder / f"{folder.name}_flair.nii.gz", np.zeros_like)
    _raises(lambda: brats.prepare(src, tmp_path / "out"), f"{folder.name}_flair.nii.gz", "empty")


def test_case_id_differs_from_folder(src, tmp_path):
    folder = _case_dirs(src)[0]
    (folder / f"._{folder.name}_t1.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS residue: ignored
    assert load_segmentation_dataset(brats.prepare(src, tmp_path / "ok")).meta["ignored_files"] == 2
    wrong = folder / "Brats18_TCIA99_999_1_t1.nii.gz"
    (folder / f"{folder.name}_t1.nii.gz").rename(wrong)
    _raises(lambda: brats.prepare(src, tmp_path / "out"), wrong.name, "case id", folder.name)


def test_unreadable_volume_and_no_cases(src, tmp_path):
    folder = _case_dirs(src)[0]
    (folder / f"{folder.name}_flair.nii.gz").write_bytes(b"not a nifti file")
    _raises(lambda: brats.prepare(src, tmp_path / "out"), f"{folder.name}_flair.nii.gz", "unreadable")
    empty = tmp_path / "empty"
    (empty / "HGG").mkdir(parents=True)
    (empty / "survival_data.csv").write_text("BraTS18ID,Age,Survival\n")
    _raises(lambda: brats.prepare(empty, tmp_path / "out"), str(empty), "no BraTS case folders")
    _raises(lambda: brats.prepare(tmp_path / "nowhere", tmp_path / "out"), "does not exist")


def test_mixed_releases_refused(src, tmp_path):
    folder = _case_dirs(src)[0]
    (folder / f"{folder.name}_t1ce.nii.gz").rename(folder / f"{folder.name}_t1c.nii.gz")
    _raises(lambda: brats.prepare(src, tmp_path / "out"), folder.name, "mixes")


def test_synthesize_rejects_bad_requests(tmp_path):
    _raises(lambda: brats.synthesize(tmp_path / "a", n=2, size=SIZE), "n=2")
    _raises(lambda: brats.synthesize(tmp_path / "b", n=N, size=16), "size=16")


def test_exclude_from_keeps_listed_cases_out_of_test(raw, prepared, tmp_path):
    """LVM-Med's lvm-med-training-data/brats list format: one case id per line; a listed case drawn
    into test moves to train (the released checkpoint was pretrained on it), counted in dataset.json."""
    from medssl_bench.downstream.datasets.options import PrepareOptions

    before = prepared
    test_cases = sorted({s.case for s in before.split("test")})
    listed = tmp_path / "file_list.txt"
    listed.write_text("\n".join([test_cases[0], "Brats18_NOT_IN_THIS_DOWNLOAD_1"]) + "\n")
    folder = brats.prepare(raw, tmp_path / "out", options=PrepareOptions(exclude_from=(listed,)))
    after = load_segmentation_dataset(folder)
    assert test_cases[0] not in {s.case for s in after.split("test")}
    assert test_cases[0] in {s.case for s in after.split("train")}
    assert {s.case for s in after.split("test")} == set(test_cases[1:])
    record = after.meta["split"]["exclude_from"]
    assert (record["in_test"], record["moved_to_train"], record["listed_in_download"]) == (1, 1, 1)
    assert record["moved_examples"] == [test_cases[0]] and after.meta["content_hash"] != before.meta["content_hash"]


def test_a_stray_label_code_is_background_unless_strict(src, tmp_path):
    """A code of neither release (7) is read as background, counted and warned about, as the public
    loaders do; --strict refuses it. The other release's enhancing code is refused either way (above)."""
    from medssl_bench.downstream.datasets.options import PrepareOptions

    folder = _case_dirs(src)[0]
    seg = folder / f"{folder.name}_seg.nii.gz"
    raw = np.asarray(nib.load(seg).dataobj)
    code = max((1, 2, 4), key=lambda c: np.count_nonzero(raw == c))  # a tumour code this case holds
    tumour = int(np.count_nonzero(raw == code))
    assert tumour > 0
    _rewrite(seg, lambda v: np.where(v == code, 7, v).astype(np.uint8))
    ds = load_segmentation_dataset(brats.prepare(src, tmp_path / "out"))
    assert ds.meta["unknown_label_codes"]["codes"] == {"7": tumour}
    assert any("read as background: 7" in w for w in ds.meta["warnings"])
    _raises(lambda: brats.prepare(src, tmp_path / "strict", options=PrepareOptions(strict=True)), seg.name,
            "label value(s) 7 outside the codebook")
