"""BUSI adapter quirks (the contract every adapter meets: tests/test_dataset_contract.py): names with
spaces, several masks per image ORed, the split rule (normal dropped, stratified 413/104/130
proportions), wrapper folders, macOS residue, and the input errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medssl_bench.downstream.datasets import busi
from medssl_bench.downstream.datasets.canonical_seg import load_segmentation_dataset
from medssl_bench.downstream.phantoms.seg_busi import busi_scan
from tests.dataset_helpers import Download, raises, refused

N, SIZE = 30, 64
DOWNLOAD = Download(busi, n=N, seed=3, size=SIZE, part=busi.ROOT_DIR)  # src: the benign/ folder's parent


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    return load_segmentation_dataset(busi.prepare(raw, tmp_path_factory.mktemp("out")))


def _union_of_raw_masks(folder: Path, stem: str) -> tuple[np.ndarray, int]:
    masks = sorted(folder.glob(f"{stem}_mask*.png"))
    arrays = [np.asarray(Image.open(p).convert("L")) > 127 for p in masks]
    return np.logical_or.reduce(arrays).astype(np.uint8), len(masks)


# ----------------------------------------------------------------------------- round trip
def test_raw_layout_quirks(raw):
    root = raw / busi.ROOT_DIR
    benign = sorted(p.name for p in (root / "benign").iterdir())
    assert "benign (1).png" in benign and "benign (1)_mask.png" in benign and ".DS_Store" in benign
    assert any(n.endswith("_mask_1.png") for d in ("benign", "malignant") for n in
               (p.name for p in (root / d).iterdir()))
    with Image.open(root / "benign" / "benign (1).png") as im:
        assert im.mode == "RGB" and im.size[1] == SIZE  # gray content stored RGB
    modes = {Image.open(p).mode for p in root.rglob("*_mask.png")}
    assert modes == {"RGB", "L"}
    for p in (root / "normal").glob("*_mask.png"):
        assert not np.asarray(Image.open(p)).any()


def test_round_trip(raw, prepared):
    ds, root = prepared, raw / busi.ROOT_DIR
    n_img = {c: len([p for p in (root / c).glob("*).png")]) for c in ("benign", "malignant", "normal")}
    assert ds.kind == "2d" and ds.classes == ["background", "lesion"] and ds.target_classes == [1]
    meta = ds.meta
    assert meta["synthetic"] and meta["dataset"] == "busi" and meta["dropped_normal"] == n_img["normal"]
    assert len(ds.samples) == n_img["benign"] + n_img["malignant"] and meta["ignored_files"] == 1
    assert not any("normal" in s.id for s in ds.samples)
    per_split = meta["lesion_types_per_split"]
    for split in ("train", "val", "test"):
        assert per_split[split]["benign"] >= 1 and per_split[split]["malignant"] >= 1
        assert len(ds.split(split)) == sum(per_split[split].values())
    for cls in ("benign", "malignant"):  # test = 130/647 of each lesion type, rounded half up
        assert per_split["test"][cls] == int(np.floor(n_img[cls] * 130 / 647 + 0.5))
    several = 0
    for s in ds.samples:
        cls = "benign" if s.id.startswith("benign") else "malignant"
        stem = s.id.replace(f"{cls}_", f"{cls} (") + ")"
        expect, k = _union_of_raw_masks(root / cls, stem)
        got = np.asarray(Image.open(s.mask))
        assert got.dtype == np.uint8 and np.array_equal(got, expect), s.id
        if k > 1:
            several += 1
            first = np.asarray(Image.open(root / cls / f"{stem}_mask.png").convert("L")) > 127
            assert got.sum() > first.sum()  # the second lesion's mask was ORed in
        raw_pixels = np.asarray(Image.open(root / cls / f"{stem}.png").convert("L"))
        assert np.array_equal(np.asarray(Image.open(s.image).convert("L")), raw_pixels)
        assert s.case == stem and s.slice is None and s.domain == ""  # each image its own case
    assert several >= 1


def test_full_release_proportions():
    split = busi.assign_splits(np.array([0] * 437 + [1] * 210), seed=42)
    assert [int((split == s).sum()) for s in ("train", "val", "test")] == [413, 104, 130]


def test_seed_changes_the_split(raw, prepared, tmp_path):
    reseeded = load_segmentation_dataset(busi.prepare(raw, tmp_path / "o2", seed=7))
    assert [s.split for s in reseeded.samples] != [s.split for s in prepared.samples]


def test_wrapper_folders(raw, tmp_path):
    for src in (raw, raw / busi.ROOT_DIR):
        assert len(load_segmentation_dataset(busi.prepare(src, tmp_path / "o")).samples) > 0
    wrapped = tmp_path / "archive"
    shutil.copytree(raw, wrapped / "extracted")
    assert busi.prepare(wrapped, tmp_path / "w").is_dir()


def test_macos_residue_ignored(src, tmp_path):
    (src / "benign" / "._benign (1)_mask.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (src / "Thumbs.db").write_bytes(b"x")
    ds = load_segmentation_dataset(busi.prepare(src, tmp_path / "o"))
    assert ds.meta["ignored_files"] == 3 and any("ignored 3" in n for n in ds.meta["notes"])


def test_phantom_shapes():
    def aspect(kind):
        out = []
        for i in range(12):
            _, masks = busi_scan(np.random.default_rng([9, i]), 96, kind)
            ys, xs = np.nonzero(masks[0])
            out.append((np.ptp(ys) + 1) / (np.ptp(xs) + 1))
        return np.median(out)
    assert aspect("benign") < 0.9 < 1.0 < aspect("malignant")  # wider-than-tall vs taller-than-wide
    img, masks = busi_scan(np.random.default_rng(1), 64, "normal", 2)
    assert masks == [] and img.dtype == np.uint8 and img.shape[0] == 64


# ----------------------------------------------------------------------------- errors
def test_mask_without_image(src, tmp_path):
    (src / "malignant" / "malignant (2).png").unlink()
    refused(busi, src, tmp_path / "o", "malignant (2)_mask.png", "mask without its image")


def test_image_without_mask(src, tmp_path):
    for p in (src / "benign").glob("benign (3)_mask*.png"):
        p.unlink()
    refused(busi, src, tmp_path / "o", "benign (3).png", "without any mask")


def test_mask_size_differs(src, tmp_path):
    Image.new("L", (SIZE + 7, SIZE), 255).save(src / "benign" / "benign (5)_mask.png")
    refused(busi, src, tmp_path / "o", "benign (5)_mask.png", f"{SIZE + 7}x{SIZE}")


def test_unreadable_mask(src, tmp_path):
    (src / "malignant" / "malignant (1)_mask.png").write_bytes(b"not a png")
    refused(busi, src, tmp_path / "o", "malignant (1)_mask.png", "unreadable")


def test_missing_class_folder(src, tmp_path):
    shutil.rmtree(src / "malignant")
    refused(busi, src, tmp_path / "o", "no malignant/ folder")
    refused(busi, tmp_path / "nowhere", tmp_path / "o", "does not exist")


def test_synth_request_checked(tmp_path):
    raises(lambda: busi.synthesize(tmp_path / "s", n=5), "n=5 is too small")
