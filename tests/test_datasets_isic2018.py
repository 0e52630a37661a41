"""ISIC 2018 Task 1 adapter quirks (the contract every adapter meets: tests/test_dataset_contract.py):
the official-trio and Training-only split rules, mask fidelity, nested zip folders, input errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets import isic2018
from medssl_bench.downstream.datasets.canonical_seg import load_segmentation_dataset
from medssl_bench.downstream.phantoms.seg_isic import isic_sample, lesion_under_hair
from medssl_bench.downstream.datasets.options import PrepareOptions
from tests.dataset_helpers import Download, raises, refused

N, SIZE, SEED = 20, 40, 3
TRAIN_IN, TRAIN_GT = isic2018.input_dir("Training"), isic2018.truth_dir("Training")
DOWNLOAD = Download(isic2018, n=N, seed=SEED, size=SIZE, folder="isic")


def _stems(folder: Path, suffix: str) -> list[str]:
    return sorted(p.name[:12] for p in folder.iterdir() if p.name.endswith(suffix))


def test_round_trip_official_split(raw, tmp_path):
    ds = load_segmentation_dataset(isic2018.prepare(raw, tmp_path / "out"))
    meta = ds.meta
    assert ds.name == "isic2018" and ds.kind == "2d" and ds.classes == ["background", "lesion"]
    assert ds.target_classes == [1] and meta["synthetic"] and meta["official_splits"] == ["train", "val", "test"]
    assert "official" in meta["split"]["method"] and meta["split"]["seed"] is None
    assert meta["ignored_files"] == {"Training": 4, "Validation": 4, "Test": 4}  # LICENSE + ATTRIBUTION x2
    for split, part in isic2018.PARTS.items():
        expected = _stems(raw / isic2018.input_dir(part), ".jpg")
        assert expected == _stems(raw / isic2018.truth_dir(part), "_segmentation.png")
        assert sorted(s.id for s in ds.split(split)) == expected
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [14, 2, 4]
    shapes = set()
    for s in ds.samples:
        part = isic2018.PARTS[s.split]
        raw_img = raw / isic2018.input_dir(part) / f"{s.id}.jpg"
        raw_mask = np.asarray(Image.open(raw / isic2018.truth_dir(part) / f"{s.id}_segmentation.png"))
        assert set(np.unique(raw_mask)) <= {0, 255}
        assert s.image.read_bytes() == raw_img.read_bytes()  # linked as is
        mask = np.asarray(Image.open(s.mask))
        np.testing.assert_array_equal(mask, raw_mask // 255)
        assert 0 < mask.mean() < 0.9
        shapes.add(mask.shape)
        assert mask.shape[0] != mask.shape[1] and SIZE <= min(mask.shape) <= max(mask.shape) <= SIZE * 1.5
    assert len(shapes) > 3  # variable sizes, like the real images


def test_masks_are_what_the_generator_drew(raw, tmp_path):
    ds = load_segmentation_dataset(isic2018.prepare(raw, tmp_path / "out"))
    first = sorted(ds.split("train"), key=lambda s: s.id)[0]  # index 0 of the synthetic stream
    rng = np.random.default_rng([SEED, isic2018._TAG, 1, 0])
    height, width = (int(v) for v in rng.integers(SIZE, int(SIZE * 1.5) + 1, 2))
    _, intended = isic_sample(rng, height, width + int(height == width))
    np.testing.assert_array_equal(np.asarray(Image.open(first.mask)), intended)


def test_lesion_is_recovered_under_hair():
    lesion = np.zeros((20, 20), np.float32)
    lesion[5:15, 5:15] = 1
    hair = np.zeros_like(lesion)
    hair[:, 9] = 1.0  # an opaque hair across the lesion
    hair[:, 12] = 0.3  # a faint one
    full = lesion_under_hair(lesion * (1 - hair), hair)
    np.testing.assert_allclose(full, lesion, atol=1e-5)


def test_training_only_download_is_split_70_10_20(src, tmp_path):
    for part in ("Validation", "Test"):
        shutil.rmtree(src / isic2018.input_dir(part))
        shutil.rmtree(src / isic2018.truth_dir(part))
    ds = load_segmentation_dataset(isic2018.prepare(src, tmp_path / "a", seed=5))
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [10, 1, 3]  # 14 * .7/.1/.2
    assert ds.meta["split"]["seed"] == 5 and "70/10/20" in ds.meta["split"]["method"]
    again = load_segmentation_dataset(isic2018.prepare(src, tmp_path / "b", seed=5))
    assert [(s.id, s.split) for s in again.samples] == [(s.id, s.split) for s in ds.samples]
    other = [load_segmentation_dataset(isic2018.prepare(src, tmp_path / f"s{k}", seed=k)) for k in (6, 7)]
    assert any({s.id for s in o.split("test")} != {s.id for s in ds.split("test")} for o in other)


def test_wrapper_folder_and_nested_zip_folder(src, tmp_path):
    wrapped = tmp_path / "download"
    wrapped.mkdir()
    shutil.move(str(src), wrapped / "ISIC2018")
    train_in = wrapped / "ISIC2018" / TRAIN_IN
    shutil.move(str(train_in), tmp_path / "tmp-in")
    train_in.mkdir()
    shutil.move(str(tmp_path / "tmp-in"), train_in / TRAIN_IN)  # zip unpacked into a folder of its name
    ds = load_segmentation_dataset(isic2018.prepare(wrapped, tmp_path / "out"))
    assert len(ds.samples) == N


# ----------------------------------------------------------------------------- errors
def _first(folder: Path, suffix: str) -> Path:
    return sorted(p for p in folder.iterdir() if p.name.endswith(suffix))[0]


def test_image_without_mask_and_mask_without_image(src, tmp_path):
    mask = _first(src / TRAIN_GT, "_segmentation.png")
    moved = mask.rename(tmp_path / mask.name)
    refused(isic2018, src, tmp_path / "out", "image without mask", mask.name[:12] + ".jpg")
    moved.rename(mask)
    image = _first(src / TRAIN_IN, ".jpg")
    image.unlink()
    refused(isic2018, src, tmp_path / "out", "mask without image", mask.name)


def test_mask_size_and_values_and_unreadable(src, tmp_path):
    mask = _first(src / TRAIN_GT, "_segmentation.png")
    good = mask.read_bytes()
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(mask)
    refused(isic2018, src, tmp_path / "out", mask.name, "mask is 12x10")
    values = np.zeros(Image.open(_first(src / TRAIN_IN, ".jpg")).size[::-1], np.uint8)
    values[:3] = 128
    values[3:6] = 255
    Image.fromarray(values).save(mask)
    raises(lambda: isic2018.prepare(src, tmp_path / "out", options=PrepareOptions(strict=True)),
           mask.name, "label value(s) 128 outside the codebook")
    assert not (tmp_path / "out" / isic2018.NAME).exists()
    mask.write_bytes(b"not a png")
    refused(isic2018, src, tmp_path / "out", mask.name, "unreadable mask")
    mask.write_bytes(good)
    image = _first(src / TRAIN_IN, ".jpg")
    image.write_bytes(image.read_bytes()[:200])
    refused(isic2018, src, tmp_path / "out", image.name)


def test_missing_folders(src, tmp_path):
    refused(isic2018, tmp_path / "nope", tmp_path / "out", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(isic2018, empty, tmp_path / "out", TRAIN_IN, "empty")
    shutil.rmtree(src / isic2018.truth_dir("Validation"))
    refused(isic2018, src, tmp_path / "out", "missing folder " + isic2018.truth_dir("Validation"))
    shutil.rmtree(src / TRAIN_GT)
    refused(isic2018, src, tmp_path / "out", "missing folder " + TRAIN_GT)


def test_empty_training_folder(src, tmp_path):
    for p in (src / TRAIN_IN).glob("ISIC_*"):
        p.unlink()
    for p in (src / TRAIN_GT).glob("ISIC_*"):
        p.unlink()
    refused(isic2018, src, tmp_path / "out", "no ISIC_*.jpg images", TRAIN_IN)


def test_synthesize_refuses_tiny_requests(tmp_path):
    raises(lambda: isic2018.synthesize(tmp_path / "x", n=3, size=SIZE), "n=3 is too small")


def test_unknown_mask_value_becomes_background_counted_and_warned(src, tmp_path):
    mask = _first(src / TRAIN_GT, "_segmentation.png")
    height, width = Image.open(_first(src / TRAIN_IN, ".jpg")).size[::-1]
    values = np.zeros((height, width), np.uint8)
    values[:3] = 128  # a stray value: background, as the public loaders read it
    values[3:6] = 255
    Image.fromarray(values).save(mask)
    ds = load_segmentation_dataset(isic2018.prepare(src, tmp_path / "out"))
    record = ds.meta["unknown_label_codes"]
    assert record["total"] == 3 * width and record["codes"] == {"128": 3 * width}
    assert list(record["files"]) == [str(mask)]
    assert any(f"{3 * width} pixel(s) in 1 file(s)" in w and "128 (" in w for w in ds.meta["warnings"])
    sample = next(s for s in ds.samples if s.id == mask.name[:12])
    expected = np.zeros((height, width), np.uint8)
    expected[3:6] = 1
    assert np.array_equal(np.asarray(Image.open(sample.mask)), expected)


def test_mask_oriented_like_its_exif_rotated_image(tmp_path):
    """An image and its mask both stored with EXIF Orientation=6 (display = stored turned 90 degrees
    clockwise): the prepared mask is the displayed one, aligned with the image as it is read."""
    src = tmp_path / "isic"
    (src / TRAIN_IN).mkdir(parents=True)
    (src / TRAIN_GT).mkdir(parents=True)
    stored = np.zeros((4, 6), np.uint8)  # 4 rows x 6 columns as stored
    stored[0, 0] = stored[0, 1] = stored[3, 5] = 255
    # displayed after a 90-degree clockwise turn: 6 rows x 4 columns; stored (r, c) -> (c, 3 - r)
    expected = np.zeros((6, 4), np.uint8)
    expected[0, 3] = expected[1, 3] = expected[5, 0] = 1
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    for i in range(3):  # three pairs: enough for a Training-only 70/10/20 carve
        key = f"ISIC_{i:07d}"
        rgb = np.zeros((4, 6, 3), np.uint8)
        rgb[..., 0] = np.arange(6) * 40  # a horizontal ramp: turned, it becomes vertical
        Image.fromarray(rgb).save(src / TRAIN_IN / f"{key}.jpg", format="JPEG", quality=95, exif=exif)
        Image.fromarray(stored).save(src / TRAIN_GT / f"{key}_segmentation.png", exif=exif)
    from medssl_bench.harness.imageio import read_pixels

    assert read_pixels(src / TRAIN_IN / "ISIC_0000000.jpg").shape[:2] == (6, 4)  # images are turned
    ds = load_segmentation_dataset(isic2018.prepare(src, tmp_path / "out"))
    assert len(ds.samples) == 3
    for sample in ds.samples:
        assert np.array_equal(np.asarray(Image.open(sample.mask)), expected), sample.id
        assert read_pixels(sample.image).shape[:2] == (6, 4)
