"""downstream.datasets._paths: the one way adapters find folders in a raw download (case ignored,
names differing only by case refused, wrappers and zip residue) and sort names naturally."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medssl_bench.downstream.datasets import kvasir_seg
from medssl_bench.downstream.datasets._paths import candidate_roots, child, find_root, natural_key, subfolders
from medssl_bench.downstream.datasets.canonical_seg import load_segmentation_dataset
from tests.dataset_helpers import raises


def _tree(root: Path, *folders: str) -> Path:
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    return root


def test_child_ignores_case_and_residue(tmp_path):
    root = _tree(tmp_path, "Training", ".hidden", "__MACOSX", "ISIC/ISIC", "other/Inner")
    (root / "file.txt").write_text("x")
    assert child(root, "training") == child(root, "TRAINING") == root / "Training"
    assert child(root, ".hidden") is None and child(root, "__macosx") is None and child(root, "file.txt") is None
    assert child(root / "missing", "x") is None and child(root / "file.txt", "x") is None
    assert child(root, "isic") == root / "ISIC" and child(root, "isic", nested=True) == root / "ISIC" / "ISIC"
    assert child(root, "other", nested=True) == root / "other"  # only a same-named folder is followed
    assert subfolders(root) == {"isic": root / "ISIC", "training": root / "Training", "other": root / "other"}


def test_names_differing_only_by_case_are_refused(tmp_path):
    root = _tree(tmp_path, "Training", "training")
    raises(lambda: child(root, "Training"), str(root), "Training/ and training/", "differ only by case")


def test_candidate_roots_breadth_first(tmp_path):
    root = _tree(tmp_path / "src", "b/deep", "a/deeper", ".git/x", "__MACOSX/y")
    assert candidate_roots(root, depth=2) == [root, root / "a", root / "b", root / "a" / "deeper", root / "b" / "deep"]
    raises(lambda: candidate_roots(tmp_path / "nowhere"), "nowhere", "does not exist")
    (tmp_path / "file").write_text("x")
    raises(lambda: candidate_roots(tmp_path / "file"), "is not a folder")


def test_find_root(tmp_path):
    src = _tree(tmp_path / "src", "wrapper/Images", "wrapper/masks")
    assert find_root(src, ("images", "masks"), layout="L") == src / "wrapper"
    shutil.rmtree(src / "wrapper" / "masks")
    raises(lambda: find_root(src, ("images", "masks"), layout="L"), str(src / "wrapper" / "masks"),
           "missing folder masks/", "has images/ but no masks/ folder", "expected L")
    assert find_root(src, ("images", "masks"), required=(), layout="L") == src / "wrapper"
    raises(lambda: find_root(src, ("training", "test"), required=("training",), label="DRIVE", layout="L"),
           str(src), "no DRIVE training/ folder found; expected L")
    raises(lambda: find_root(src, ("a", "b", "c"), layout="L"), "no a/, b/ and c/ folders found")
    raises(lambda: find_root(src, ("a", "b"), required=(), layout="L"), "no a/ or b/ folders found")
    deep = _tree(tmp_path / "deep", "x/y/images")
    assert find_root(deep, ("images",), depth=2, layout="L") == deep / "x" / "y"
    raises(lambda: find_root(tmp_path / "deep", ("images",), layout="L"), "no images/ folder found")


def test_natural_key():
    names = ["Case10", "case9", "benign (10)", "benign (9)", "Case1"]
    assert sorted(names, key=natural_key) == ["benign (9)", "benign (10)", "Case1", "case9", "Case10"]


@pytest.fixture(scope="module")
def kvasir(tmp_path_factory) -> Path:
    return kvasir_seg.synthesize(tmp_path_factory.mktemp("kvasir") / "raw", n=8, seed=1, size=32)


def test_adapters_read_folders_in_any_case(kvasir, tmp_path):
    """Kvasir-SEG (earlier: exact-case images/ and masks/ only) reads Images/ and MASKS/ too."""
    src = Path(shutil.copytree(kvasir / "Kvasir-SEG", tmp_path / "Kvasir-SEG"))
    expected = load_segmentation_dataset(kvasir_seg.prepare(src, tmp_path / "a")).meta["content_hash"]
    (src / "images").rename(src / "Images")
    (src / "masks").rename(src / "MASKS")
    assert load_segmentation_dataset(kvasir_seg.prepare(src, tmp_path / "b")).meta["content_hash"] == expected
    (src / "masks").mkdir()
    raises(lambda: kvasir_seg.prepare(src, tmp_path / "c"), "MASKS/ and masks/", "differ only by case")
    assert not (tmp_path / "c" / "kvasir_seg").exists()
