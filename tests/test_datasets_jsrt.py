"""JSRT + SCR adapter quirks (the contract every adapter meets: tests/test_dataset_contract.py):
big-endian raw decoding, half-resolution GIF masks (both flavours), split rule, tolerated folder
variants and the errors that name the offending file."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets import jsrt
from medssl_bench.downstream.datasets.canonical_seg import load_segmentation_dataset
from tests.dataset_helpers import Download, raises as _raises

N, SIZE = 12, 64
DOWNLOAD = Download(jsrt, n=N, seed=3, size=SIZE, folder="JSRT")


def _gif(path: Path) -> np.ndarray:
    """Decoded independently of the adapter: palette through convert('L'), then > 127."""
    with Image.open(path) as im:
        return (np.asarray(im.convert("L")) > 127).astype(np.uint8)


def test_raw_layout_quirks(raw):
    images = sorted((raw / "All247images").glob("*.IMG"))
    assert len(images) == N and {p.name[:5] for p in images} == {"JPCLN", "JPCNN"}
    assert all(p.stat().st_size == 2 * SIZE * SIZE for p in images)  # headerless uint16
    assert (raw / "All247images" / "CLNDAT_EN.txt").is_file() and (raw / "All247images" / "CNNDAT_EN.txt").is_file()
    for p in images:  # odd case numbers in fold1, even in fold2
        fold = "fold1" if int(p.stem[-3:]) % 2 else "fold2"
        for struct in jsrt.STRUCTURES:
            gif = raw / "scratch" / fold / "masks" / struct / f"{p.stem}.gif"
            assert gif.is_file(), gif
            assert Image.open(gif).size == (SIZE // 2, SIZE // 2)
    modes = {Image.open(g).mode for g in raw.rglob("*.gif")}
    assert modes == {"P", "L"}  # both GIF flavours of docs/datasets.md


def test_round_trip(raw, tmp_path):
    ds = load_segmentation_dataset(jsrt.prepare(raw, tmp_path / "out", seed=5))
    assert (ds.name, ds.kind, ds.classes, ds.target_classes) == ("jsrt", "2d", ["background", "lung"], [1])
    assert ds.meta["synthetic"] is True and ds.meta["ignored_files"] == 2  # the clinical tables
    counts = {s: len(ds.split(s)) for s in ("train", "val", "test")}
    assert sum(counts.values()) == N and counts["test"] == round(N * 0.2) and counts["val"] >= 1
    assert counts == {s: ds.meta["split"]["counts"][s]["images"] for s in counts}
    for split in ("val", "test"):  # stratified: both nodule and non-nodule cases held out
        assert {s.id[:5] for s in ds.split(split)} == {"JPCLN", "JPCNN"} or len(ds.split(split)) < 2
    sample = next(s for s in ds.samples if s.id == "JPCNN002")  # even case: fold2
    mask = np.asarray(Image.open(sample.mask))
    gifs = [raw / "scratch" / "fold2" / "masks" / side / "JPCNN002.gif" for side in jsrt.LUNGS]
    union = np.maximum(*[_gif(g) for g in gifs])
    assert np.array_equal(mask, union.repeat(2, 0).repeat(2, 1))  # nearest-neighbour 2x upsampling
    assert 0.1 < mask.mean() < 0.5 and set(np.unique(mask)) == {0, 1}
    values = np.fromfile(raw / "All247images" / "JPCNN002.IMG", ">u2").reshape(SIZE, SIZE)
    image = np.asarray(Image.open(sample.image))
    assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)
    assert np.abs(image.astype(float) - (1 - values / 4096) * 255).max() <= 0.5
    # the lungs are darker than the rest of the body in the display image
    assert image[mask == 1].mean() < image[mask == 0].mean()


def test_tolerated_folder_variants(src, tmp_path):
    """SCR folder renamed to the one directly holding fold1/fold2, everything in a wrapper."""
    wrapper = tmp_path / "download" / "JSRT-all"
    wrapper.mkdir(parents=True)
    shutil.move(str(src / "All247images"), wrapper / "All247images")
    shutil.move(str(src / "scratch"), wrapper / "SCR")
    (wrapper / "SCR" / "fold1" / "masks" / "left lung" / ".DS_Store").write_bytes(b"\0")
    ds = load_segmentation_dataset(jsrt.prepare(tmp_path / "download", tmp_path / "out"))
    assert len(ds.samples) == N and ds.meta["ignored_files"] == 3  # the .DS_Store is skipped, counted


def test_bad_raw_files(src, tmp_path):
    img = src / "All247images" / "JPCLN001.IMG"
    img.write_bytes(img.read_bytes()[:-2])
    _raises(lambda: jsrt.prepare(src, tmp_path / "out"), "JPCLN001.IMG", "not a square 16-bit")
    values = np.fromfile(src / "All247images" / "JPCLN003.IMG", ">u2")
    img.write_bytes(np.full(SIZE * SIZE, 3000, "<u2").tobytes())  # little-endian: > 12 bits
    _raises(lambda: jsrt.prepare(src, tmp_path / "out"), "JPCLN001.IMG", "exceed 12 bits")
    img.write_bytes(values.tobytes())
    jsrt.prepare(src, tmp_path / "out")  # repaired
    assert not list(tmp_path.glob("out/.jsrt.tmp-*"))  # failed runs left nothing behind


def test_missing_and_orphan_masks(src, tmp_path):
    gif = src / "scratch" / "fold1" / "masks" / "right lung" / "JPCLN003.gif"
    gif.unlink()
    _raises(lambda: jsrt.prepare(src, tmp_path / "out"), "JPCLN003.IMG", "no SCR 'right lung' mask")
    (src / "All247images" / "JPCLN003.IMG").unlink()
    _raises(lambda: jsrt.prepare(src, tmp_path / "out"), "left lung/JPCLN003.gif", "has no JSRT image")
    assert not (tmp_path / "out" / "jsrt").exists()


def test_mask_size_mismatch(src, tmp_path):
    gif = src / "scratch" / "fold2" / "masks" / "left lung" / "JPCNN002.gif"
    Image.fromarray(np.zeros((SIZE // 2 + 3, SIZE // 2), np.uint8)).save(gif, format="GIF")
    _raises(lambda: jsrt.prepare(src, tmp_path / "out"), "JPCNN002.gif", "expected the same size or half")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(gif, format="GIF")  # full size: accepted
    ds = load_segmentation_dataset(jsrt.prepare(src, tmp_path / "out"))
    assert np.asarray(Image.open(next(s for s in ds.samples if s.id == "JPCNN002").mask)).shape == (SIZE, SIZE)


def test_missing_folders(src, tmp_path):
    shutil.rmtree(src / "scratch" / "fold2" / "masks" / "right lung")
    _raises(lambda: jsrt.prepare(src, tmp_path / "out"), "fold2/masks/right lung", "folder is missing")
    shutil.rmtree(src / "scratch")
    _raises(lambda: jsrt.prepare(src, tmp_path / "out"), "no SCR mask folder")
    _raises(lambda: jsrt.prepare(src / "All247images" / "nothing", tmp_path / "out"), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises(lambda: jsrt.prepare(empty, tmp_path / "out"), str(empty), "no JSRT images")


def test_synthesize_refuses_odd_size(tmp_path):
    _raises(lambda: jsrt.synthesize(tmp_path / "x", n=N, size=65), "must be even")
