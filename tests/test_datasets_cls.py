"""Classification dataset adapters (FGADR, Brain Tumor MRI), their quirks (the contract every adapter
meets: tests/test_dataset_contract.py): both Kaggle brain releases, FGADR's paper split and grading
CSV, split helpers, the synthetic marker, validation errors, the canonical loader, shortcut probe."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medssl_bench.downstream.datasets import ADAPTERS, brain_tumor, fgadr
from medssl_bench.downstream.datasets.canonical import (
    SYNTHETIC_MARKER, label_fraction_subset, load_classification_dataset, stratified_split,
)
from tests.dataset_helpers import Download, file_digests as _files, raises as _raises

N, SIZE = 60, 48
DOWNLOAD = {"fgadr": Download(fgadr, n=N, seed=1, size=SIZE, folder="FGADR-Seg-set_Release"),
            "sartaj": Download(brain_tumor, n=N, seed=1, size=SIZE, folder="sartaj"),
            "masoud": Download(brain_tumor, n=N, seed=1, size=SIZE, folder="masoud", variant="masoud")}


def _grade_rows(root: Path) -> list[list[str]]:
    return list(csv.reader(open(root / "Seg-set" / fgadr.CSV_NAME, newline="")))


def _write_rows(root: Path, rows: list[list[str]]) -> None:
    (root / "Seg-set" / fgadr.CSV_NAME).write_text("".join(",".join(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------- round trips
def test_fgadr_round_trip_and_paper_split(raw, tmp_path):
    src = raw["fgadr"]
    rows = {name: int(g) for name, g in _grade_rows(src)}
    assert len(rows) == N and not (src / "Seg-set" / fgadr.CSV_NAME).read_text().startswith("image")
    ds = load_classification_dataset(fgadr.prepare(src, tmp_path / "out"))
    meta = ds.meta
    assert meta["format"] == "bench-dataset/1" and meta["dataset"] == "fgadr" and meta["synthetic"]
    assert ds.classes == ["0", "1", "2", "3", "4"] and meta["family"] == "classification"
    assert meta["source"]["src"] == str(src.resolve()) and meta["unlabeled_images"] == 0
    assert len(ds.samples) == N and meta["split"]["seed"] == 42 and "paper" in meta["split"]["method"]
    for s in ds.samples:
        assert s.path.is_absolute() and s.path.is_file() and " " not in s.path.name
        assert rows[s.path.name] == s.label
        assert (int(s.id[:4]) > 1500) == (s.split == "test")
    counts = meta["split"]["counts"]
    for split in ("train", "val", "test"):
        assert list(np.bincount(ds.labels(split), minlength=5)) == [counts[split][c] for c in ds.classes]
    assert all(counts["train"][c] >= 2 and counts["val"][c] >= 1 and counts["test"][c] >= 2 for c in ds.classes)
    assert not {s.id for s in ds.split("train")} & {s.id for s in ds.split("val")}
    pool = len(ds.split("train")) + len(ds.split("val"))
    assert abs(len(ds.split("val")) - 0.2 * pool) <= 3  # stratified 20 % of the train pool
    assert all(counts["train"][c] + counts["val"][c] + counts["test"][c] == sum(g == int(c) for g in rows.values())
               for c in ds.classes)


@pytest.mark.parametrize("variant", ["sartaj", "masoud"])
def test_brain_round_trip_official_split(raw, tmp_path, variant):
    src = raw[variant]
    ds = load_classification_dataset(brain_tumor.prepare(src, tmp_path / "out"))
    meta = ds.meta
    assert ds.classes == ["glioma", "meningioma", "no_tumor", "pituitary"] and meta["synthetic"]
    assert meta["source"]["variant"] == variant and meta["ignored_files"] == 1  # the .DS_Store
    testing = sorted(p for p in (src / "Testing").rglob("*.jpg"))
    assert len(ds.split("test")) == len(testing) and len(ds.samples) == N
    assert all(s.id.startswith("Testing_") for s in ds.split("test"))
    assert all(s.id.startswith("Training_") for s in ds.split("train") + ds.split("val"))
    names = {"sartaj": "glioma_tumor", "masoud": "glioma"}[variant]
    assert len(ds.split("test")) and (src / "Testing" / names).is_dir()
    n_training = len(ds.split("train")) + len(ds.split("val"))
    assert abs(len(ds.split("val")) - 0.3 * n_training) <= 3
    for c in range(4):
        assert (ds.labels("train") == c).sum() >= 2 and (ds.labels("val") == c).sum() >= 1
        assert (ds.labels("test") == c).sum() >= 2


def test_brain_quirky_names_and_strays(src, tmp_path):
    src = src("sartaj")
    first = sorted((src / "Training" / "glioma_tumor").glob("*.jpg"))
    assert " (" in first[0].name
    first[0].rename(first[0].with_name("gg (1) copy.JPG"))
    first[1].rename(first[1].with_name("Gg_2.jpeg"))
    (src / "Training" / "glioma_tumor" / "LICENSE.txt").write_text("CC0")
    (src / "Testing" / "no_tumor" / ".DS_Store").write_bytes(b"\0")
    ds = load_classification_dataset(brain_tumor.prepare(src, tmp_path / "out"))
    names = {s.path.name for s in ds.samples}
    assert "Training_glioma_tumor_gg_1_copy.JPG" in names and "Training_glioma_tumor_Gg_2.jpeg" in names
    assert all(" " not in n and "(" not in n for n in names) and len(ds.samples) == N
    assert ds.meta["ignored_files"] == 3 and "LICENSE.txt" in " ".join(ds.meta["notes"])


def test_fgadr_accepts_parent_and_seg_set_folders(raw, tmp_path):
    src = raw["fgadr"]
    metas = [load_classification_dataset(fgadr.prepare(where, tmp_path / str(i))).meta
             for i, where in enumerate([src, src.parent, src / "Seg-set"])]
    assert len({m["content_hash"] for m in metas}) == 1 and all(m["synthetic"] for m in metas)


# ----------------------------------------------------------------------------- synthetic folders
@pytest.mark.parametrize("name", ["fgadr", "brain_tumor"])
def test_generator_version_and_rewriting_a_synthetic_folder(tmp_path, name):
    module = ADAPTERS[name]
    a, b = (module.synthesize(tmp_path / k, n=24, seed=5, size=40) for k in "ab")
    marker = json.loads((a / SYNTHETIC_MARKER).read_text())
    version = {"fgadr": 1, "brain_tumor": 2}[name]  # brain 2: tumour radii doubled
    assert marker["version"] == version and marker["generator"]
    again = module.synthesize(a, n=24, seed=5, size=40)  # rewriting a synthetic folder is allowed
    assert _files(again) == _files(b)


def test_synthetic_flag_needs_the_marker(src, tmp_path):
    src = src("masoud")
    (src / SYNTHETIC_MARKER).unlink()
    ds = load_classification_dataset(brain_tumor.prepare(src, tmp_path / "out"))
    assert ds.meta["synthetic"] is False and ds.meta["source"]["synthetic_marker"] is None
    _raises(lambda: brain_tumor.synthesize(src, n=24), str(src), "not an earlier synthetic")


# ----------------------------------------------------------------------------- split helpers
def test_stratified_split_and_label_fractions():
    labels = np.repeat([0, 1, 2, 3], [50, 20, 2, 1])
    keep, held = stratified_split(labels, 0.3, 42)
    assert not set(keep) & set(held) and len(keep) + len(held) == len(labels)
    assert [int((labels[held] == c).sum()) for c in range(4)] == [15, 6, 1, 0]
    assert np.array_equal(held, stratified_split(labels, 0.3, 42)[1])
    assert not np.array_equal(held, stratified_split(labels, 0.3, 7)[1])
    subsets = [label_fraction_subset(labels, f, 3) for f in (0.01, 0.1, 1.0)]
    assert [int((labels[subsets[0]] == c).sum()) for c in range(4)] == [1, 1, 1, 1]
    assert [int((labels[subsets[1]] == c).sum()) for c in range(4)] == [5, 2, 1, 1]
    assert np.array_equal(subsets[2], np.arange(len(labels)))
    assert set(subsets[0]) <= set(subsets[1])  # nested for one seed
    assert np.array_equal(subsets[1], label_fraction_subset(labels, 0.1, 3))
    assert not np.array_equal(subsets[1], label_fraction_subset(labels, 0.1, 4))
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError):
            label_fraction_subset(labels, bad, 0)
    with pytest.raises(ValueError):
        stratified_split(labels, 1.0, 0)


# ----------------------------------------------------------------------------- FGADR errors
def test_fgadr_missing_csv(src, tmp_path):
    src = src("fgadr")
    (src / "Seg-set" / fgadr.CSV_NAME).unlink()
    _raises(lambda: fgadr.prepare(src, tmp_path / "out"), fgadr.CSV_NAME, "missing")
    _raises(lambda: fgadr.prepare(tmp_path / "nowhere", tmp_path / "out"), "nowhere", "does not exist")


@pytest.mark.parametrize("damage, fragments", [
    (lambda rows: rows.__setitem__(2, ["9999_1.png", "2"]), ["row 3", "9999_1.png", "does not exist"]),
    (lambda rows: rows.__setitem__(3, [rows[3][0], "7"]), ["row 4", "'7'", "not an integer 0-4"]),
    (lambda rows: rows.__setitem__(3, [rows[3][0], "2.5"]), ["row 4", "'2.5'"]),
    (lambda rows: rows.__setitem__(4, [rows[4][0], "2", "x"]), ["row 5", "expected 2 columns"]),
    (lambda rows: rows.__setitem__(5, [rows[1][0], rows[1][1]]), ["row 6", "graded twice", "row 2"]),
])
def test_fgadr_bad_csv_rows(src, tmp_path, damage, fragments):
    src = src("fgadr")
    rows = _grade_rows(src)
    damage(rows)
    _write_rows(src, rows)
    _raises(lambda: fgadr.prepare(src, tmp_path / "out"), fgadr.CSV_NAME, *fragments)
    assert not (tmp_path / "out" / "fgadr").exists()


def test_fgadr_corrupt_image_and_unlabeled_images(src, tmp_path):
    src = src("fgadr")
    rows = _grade_rows(src)
    _write_rows(src, [["image", "grade"]] + rows[1:])  # a header someone added is tolerated
    ds = load_classification_dataset(fgadr.prepare(src, tmp_path / "out"))
    assert ds.meta["unlabeled_images"] == 1 and len(ds.samples) == N - 1
    assert any("no grade" in note for note in ds.meta["notes"])
    victim = src / "Seg-set" / "Original_Images" / rows[3][0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated PNG
    _raises(lambda: fgadr.prepare(src, tmp_path / "out2"), rows[3][0], "cannot decode")


def test_fgadr_small_set_falls_back_to_stratified_split(src, tmp_path):
    src = src("fgadr")
    rows = [r for r in _grade_rows(src) if int(r[0][:4]) <= 1500]
    _write_rows(src, rows)
    ds = load_classification_dataset(fgadr.prepare(src, tmp_path / "out"))
    assert "stratified" in ds.meta["split"]["method"] and ds.meta["unlabeled_images"] == N - len(rows)
    assert all(ds.meta["split"]["counts"]["test"][c] >= 1 for c in ds.classes)


def test_class_without_training_images_is_refused(src, tmp_path):
    src = src("fgadr")
    _write_rows(src, [r for r in _grade_rows(src) if not (r[1] == "0" and int(r[0][:4]) <= 1500)])
    _raises(lambda: fgadr.prepare(src, tmp_path / "out"), "no training images for class(es) 0")


def test_full_release_with_other_counts_is_a_warning_not_an_error(tmp_path):
    src = tmp_path / "FGADR-Seg-set_Release" / "Seg-set"
    (src / "Original_Images").mkdir(parents=True)
    buf = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf)
    rows = []
    for i in range(1, 1561):  # recognised as the full release by its size (> 1500 images)
        shutil.copyfile(buf, src / "Original_Images" / f"{i:04d}_1.png")
        rows.append([f"{i:04d}_1.png", str(i % 5)])
    _write_rows(src.parent, rows)
    calls = []
    ds = load_classification_dataset(fgadr.prepare(src.parent, tmp_path / "out",
                                                   progress=lambda done, total: calls.append((done, total))))
    assert calls[0] == (0, 1560) and calls[-1] == (1560, 1560)
    assert not ds.meta["synthetic"] and len(ds.split("test")) == 60
    assert len(ds.meta["warnings"]) == 2 and "published" in ds.meta["warnings"][0]


def test_published_count_notes():
    assert fgadr.published_count_notes(fgadr.PUBLISHED["train"], fgadr.PUBLISHED["test"]) == []
    assert "train" in fgadr.published_count_notes([85, 168, 487, 535, 224], fgadr.PUBLISHED["test"])[0]
    assert brain_tumor.published_count_notes("sartaj", 2870, 394) == []
    assert brain_tumor.published_count_notes("sartaj", 60, 20) == []  # not a full release
    assert "5712" in brain_tumor.published_count_notes("masoud", 5700, 1311)[0]


# ----------------------------------------------------------------------------- brain errors
def test_brain_layout_errors(src, tmp_path):
    out = tmp_path / "out"
    src = src("sartaj")
    shutil.rmtree(src / "Testing")
    _raises(lambda: brain_tumor.prepare(src, out), "no Testing/")
    shutil.rmtree(src / "Training")
    _raises(lambda: brain_tumor.prepare(src, out), str(src), "no Training/ and Testing/")


def test_brain_class_folder_errors(src, tmp_path):
    out, src = tmp_path / "out", src("sartaj")
    (src / "Training" / "tumour_x").mkdir()
    _raises(lambda: brain_tumor.prepare(src, out), "tumour_x", "unknown class folder", "glioma_tumor", "notumor")
    (src / "Training" / "tumour_x").rename(src / "Training" / "notumor")
    _raises(lambda: brain_tumor.prepare(src, out), "notumor", "mixes", "sartaj", "masoud")
    shutil.rmtree(src / "Training" / "notumor")
    for p in (src / "Training" / "pituitary_tumor").iterdir():
        p.unlink()
    _raises(lambda: brain_tumor.prepare(src, out), "pituitary_tumor", "no images")
    shutil.rmtree(src / "Training" / "pituitary_tumor")
    _raises(lambda: brain_tumor.prepare(src, out), "no training images for class(es) pituitary")


def test_brain_corrupt_image(src, tmp_path):
    src = src("masoud")
    victim = sorted((src / "Testing" / "meningioma").iterdir())[0]
    victim.write_bytes(b"not a jpeg at all")
    _raises(lambda: brain_tumor.prepare(src, tmp_path / "out"), victim.name, "cannot decode")


# ----------------------------------------------------------------------------- canonical folder
def test_loader_errors_name_the_file(raw, tmp_path):
    folder = fgadr.prepare(raw["fgadr"], tmp_path / "out")
    meta_path, csv_path = folder / "dataset.json", folder / "samples.csv"
    meta, text = meta_path.read_text(), csv_path.read_text()
    lines = text.splitlines(keepends=True)

    def broken(path: Path, content: str | None, *fragments: str) -> None:
        if content is None:
            path.unlink()
        else:
            path.write_text(content)
        _raises(lambda: load_classification_dataset(folder), path.name, *fragments)
        meta_path.write_text(meta)
        csv_path.write_text(text)

    broken(meta_path, None, "missing")
    broken(meta_path, meta.replace("bench-dataset/1", "bench-dataset/9"), "format")
    broken(meta_path, "{oops", "unreadable")
    broken(csv_path, None, "missing")
    broken(csv_path, "".join(lines[:2] + [lines[2].replace(",train\n", ",holdout\n").replace(",val\n", ",holdout\n")
                                          .replace(",test\n", ",holdout\n")] + lines[3:]), "row 3", "holdout")
    cut = lines[1].rsplit(",", 2)
    broken(csv_path, lines[0] + f"{cut[0]},5,{cut[2]}" + "".join(lines[2:]), "row 2", "label '5'")
    image = folder / lines[1].split(",")[1]
    image.unlink()
    _raises(lambda: load_classification_dataset(folder), "samples.csv", "row 2", image.name, "missing")


# ----------------------------------------------------------------------------- shortcut probe
def _intensity_features(path: Path) -> list[float]:
    g = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    return [g.mean() / 255, g.std() / 255, *np.histogram(g, 16, (0, 256))[0] / g.size]


def _softmax_regression_accuracy(x, y, x_test, y_test, l2=1e-2, steps=1500) -> float:
    mu, sd = x.mean(0), x.std(0) + 1e-8
    x, x_test = (x - mu) / sd, (x_test - mu) / sd
    k = int(y.max()) + 1
    w, b, onehot = np.zeros((x.shape[1], k)), np.zeros(k), np.eye(k)[y]
    for _ in range(steps):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(x)
        w -= 0.5 * (x.T @ g + l2 * w)
        b -= 0.5 * g.sum(0)
    return float(((x_test @ w + b).argmax(1) == y_test).mean())


@pytest.mark.parametrize("name", ["fgadr", "brain_tumor"])
def test_labels_are_not_in_intensity_statistics(tmp_path, name):
    """C.3: a linear model on mean/std/histogram must stay near chance (label in shape/count/place)."""
    module = ADAPTERS[name]
    ds = load_classification_dataset(module.prepare(module.synthesize(tmp_path / "raw", n=240, seed=11, size=64),
                                                    tmp_path / "out"))
    x = np.array([_intensity_features(s.path) for s in ds.samples])
    y = np.array([s.label for s in ds.samples])
    accs = []
    for rep in range(3):
        perm = np.random.default_rng(rep).permutation(len(y))
        tr, te = perm[:160], perm[160:]
        chance = np.bincount(y[te]).max() / len(te)
        accs.append(_softmax_regression_accuracy(x[tr], y[tr], x[te], y[te]) - chance)
    assert np.mean(accs) < 0.2, accs
