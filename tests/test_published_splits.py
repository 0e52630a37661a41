"""`--split-file` (LVM-Med's files_split formats, written here by the test: nothing of LVM-Med's is
in this repository) and `--exclude-from` (its lvm-med-training-data/*/file_list.txt format), issue 18."""
from __future__ import annotations

import collections
import csv
import json
import pickle
from pathlib import Path

import pytest

from medssl_bench.downstream.datasets import busi, fgadr, kvasir_det, kvasir_seg, splits
from medssl_bench.downstream.datasets.canonical import load_classification_dataset, safe_id
from medssl_bench.downstream.datasets.canonical_seg import load_segmentation_dataset
from medssl_bench.downstream.datasets.options import PrepareOptions
from medssl_bench.harness.fsutil import sha256_file
from tests.dataset_helpers import raises


@pytest.fixture(scope="module")
def kvasir_raw(tmp_path_factory):
    return kvasir_seg.synthesize(tmp_path_factory.mktemp("kv") / "raw", n=14, seed=3, size=32)


@pytest.fixture(scope="module")
def busi_raw(tmp_path_factory):
    return busi.synthesize(tmp_path_factory.mktemp("busi") / "raw", n=24, seed=3, size=32)


@pytest.fixture(scope="module")
def fgadr_raw(tmp_path_factory):
    return fgadr.synthesize(tmp_path_factory.mktemp("fg") / "raw", n=40, seed=3, size=32)


def lvmmed_json(path: Path, train, valid, test, labels=lambda n: n) -> Path:
    """A file in the exact shape of LVM-Med's Kvasir.json / BUID.json."""
    data = {"train": train, "valid": valid, "test": test}
    data.update({f"{k}_labels": [labels(n) for n in v] for k, v in list(data.items())})
    path.write_text(json.dumps(data))
    return path


def by_split(ds) -> dict[str, set[str]]:
    return {s: {x.id for x in ds.split(s)} for s in ("train", "val", "test")}


def test_kvasir_json_reproduced_exactly(kvasir_raw, tmp_path):
    names = sorted(p.name for p in (kvasir_raw / "Kvasir-SEG" / "images").iterdir())
    train, valid, test = names[:8], names[8:10], names[10:13]  # names[13] not in the file: left out
    path = lvmmed_json(tmp_path / "Kvasir.json", train, valid, test)
    folder = kvasir_seg.prepare(kvasir_raw, tmp_path / "out", options=PrepareOptions(split_file=path))
    ds = load_segmentation_dataset(folder)
    stems = lambda ns: {Path(n).stem for n in ns}  # noqa: E731
    assert by_split(ds) == {"train": stems(train), "val": stems(valid), "test": stems(test)}
    record = ds.meta["split"]["source"]
    assert record["file"] == "Kvasir.json" and record["sha256"] == sha256_file(path)
    assert record["left_out"] == 1 and record["left_out_examples"] == [names[13]]
    assert record["members"] == {"train": 8, "val": 2, "test": 3}
    seeded = load_segmentation_dataset(kvasir_seg.prepare(kvasir_raw, tmp_path / "seeded"))
    assert seeded.meta["content_hash"] != ds.meta["content_hash"]
    assert "source" not in seeded.meta["split"]
    det = kvasir_det.prepare(kvasir_raw, tmp_path / "det", options=PrepareOptions(split_file=path))
    assert json.loads((det / "dataset.json").read_text())["split"]["source"]["sha256"] == record["sha256"]
    with open(det / "samples.csv", newline="") as handle:  # detection tests the same images
        assert {row["id"] for row in csv.DictReader(handle) if row["split"] == "test"} == stems(test)


def test_missing_member_refused_by_name(kvasir_raw, tmp_path):
    names = sorted(p.name for p in (kvasir_raw / "Kvasir-SEG" / "images").iterdir())
    path = lvmmed_json(tmp_path / "Kvasir.json", names[:8] + ["cjmissing0000000000000000.jpg"], names[8:10],
                       names[10:])
    raises(lambda: kvasir_seg.prepare(kvasir_raw, tmp_path / "out", options=PrepareOptions(split_file=path)),
           "not in the download", "cjmissing0000000000000000.jpg", "Kvasir.json")
    assert not (tmp_path / "out" / "kvasir_seg").exists()


def test_busi_json_names_with_spaces(busi_raw, tmp_path):
    root = busi_raw / busi.ROOT_DIR
    images = sorted(p.name for cls in busi.LESION_TYPES for p in (root / cls).iterdir()
                    if p.suffix == ".png" and "_mask" not in p.name)
    assert any(" (" in n for n in images)
    train, valid, test = images[:-6], images[-6:-3], images[-3:]
    path = lvmmed_json(tmp_path / "BUID.json", train, valid, test)
    ds = load_segmentation_dataset(busi.prepare(busi_raw, tmp_path / "out", options=PrepareOptions(split_file=path)))
    got = by_split(ds)
    assert [len(got[s]) for s in ("train", "val", "test")] == [len(train), 3, 3]
    assert ds.meta["split"]["source"]["left_out"] == 0 and ds.meta["split"]["seed"] is None
    assert got == {part: {safe_id(Path(n).stem) for n in names} for part, names in
                   (("train", train), ("val", valid), ("test", test))}
    bad = lvmmed_json(tmp_path / "bad.json", ["benign (999).png", *train], valid, test)
    raises(lambda: busi.prepare(busi_raw, tmp_path / "o2", options=PrepareOptions(split_file=bad)),
           "'benign (999).png'", "1 image(s)")
    mispaired = json.loads(path.read_text())
    mispaired["test_labels"] = list(reversed(mispaired["test_labels"]))
    (tmp_path / "mis.json").write_text(json.dumps(mispaired))
    raises(lambda: splits.read_lvmmed_json(tmp_path / "mis.json"), "test_labels")


def _fgadr_pickle(raw: Path, path: Path, wrap=dict) -> Path:
    rows = [line.split(",") for line in (raw / "Seg-set" / fgadr.CSV_NAME).read_text().split()]
    prefix = "/mnt/sda/haal02-data/FGADR-Seg-Set/Seg-set/Original_Images/"
    train = [(prefix + n, int(g)) for n, g in rows if int(n[:4]) <= 1500]
    test = [(prefix + n, int(g)) for n, g in rows if int(n[:4]) > 1500]
    with open(path, "wb") as handle:
        pickle.dump(wrap(train=train, val=test, test=test), handle)  # LVM-Med's val is its test
    return path


def test_fgadr_pickle_prepares(fgadr_raw, tmp_path):
    path = _fgadr_pickle(fgadr_raw, tmp_path / "fgadr_pkl_file.pkl")
    ds = load_classification_dataset(fgadr.prepare(fgadr_raw, tmp_path / "out", options=PrepareOptions(split_file=path)))
    test_ids = {s.id for s in ds.split("test")}
    assert test_ids and all(int(i[:4]) > 1500 for i in test_ids)
    assert all(int(s.id[:4]) <= 1500 for s in ds.split("train") + ds.split("val")) and ds.split("val")
    record = ds.meta["split"]["source"]
    assert record["format"] == "lvm-med pickle" and record["sha256"] == sha256_file(path)
    assert record["members"]["val"] == 0 and "equals its test" in record["notes"][0]


class Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


@pytest.mark.parametrize("payload", ["ordered", "reduce"])
def test_pickle_with_class_reference_refused_unexecuted(fgadr_raw, tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    if payload == "ordered":
        path = _fgadr_pickle(fgadr_raw, tmp_path / "split.pkl", wrap=collections.OrderedDict)
        named = "collections.OrderedDict"
    else:
        path = tmp_path / "split.pkl"
        path.write_bytes(pickle.dumps({"train": [Boom()], "val": [], "test": []}))
        named = "exec"
    raises(lambda: fgadr.prepare(fgadr_raw, tmp_path / "out", options=PrepareOptions(split_file=path)),
           named, "does not run pickled code", "json")
    assert not (tmp_path / "PWNED").exists()


def test_converted_json_accepted(fgadr_raw, tmp_path):
    path = _fgadr_pickle(fgadr_raw, tmp_path / "fgadr_pkl_file.pkl")
    data = splits.load_plain_pickle(path)
    (tmp_path / "fgadr.json").write_text(json.dumps({k: [list(x) for x in v] for k, v in data.items()}))
    ds = load_classification_dataset(fgadr.prepare(fgadr_raw, tmp_path / "out",
                                                   options=PrepareOptions(split_file=tmp_path / "fgadr.json")))
    assert all(int(s.id[:4]) > 1500 for s in ds.split("test"))


def test_exclude_from_moves_test_images_to_train(kvasir_raw, busi_raw, tmp_path):
    seeded = load_segmentation_dataset(kvasir_seg.prepare(kvasir_raw, tmp_path / "seeded"))
    test = sorted(seeded.split("test"), key=lambda s: s.id)
    listed = tmp_path / "file_list.txt"  # ids, paths, other case: all match by stem
    listed.write_text(f"{test[0].id.upper()}.jpg\nsome/folder/{test[1].id}.jpg\n\nnot_in_download\n")
    ds = load_segmentation_dataset(kvasir_seg.prepare(kvasir_raw, tmp_path / "out",
                                                      options=PrepareOptions(exclude_from=(listed,))))
    assert {s.id for s in ds.split("test")} == {s.id for s in test[2:]}
    assert {test[0].id, test[1].id} <= {s.id for s in ds.split("train")}
    record = ds.meta["split"]["exclude_from"]
    assert record["in_test"] == record["moved_to_train"] == 2 and record["listed_in_download"] == 2
    assert record["lists"][0]["file"] == "file_list.txt" and record["lists"][0]["ids"] == 3
    assert record["by_split"]["test"] == 0
    # BUSI too
    b = load_segmentation_dataset(busi.prepare(busi_raw, tmp_path / "b0"))
    first = sorted(s.id for s in b.split("test"))[0]
    raw_name = {safe_id(p.stem): p.name for p in (busi_raw / busi.ROOT_DIR).rglob("*.png")}[first]
    assert " (" in raw_name
    (tmp_path / "b.txt").write_text(f"Dataset_BUSI_with_GT/x/{raw_name}\n")
    moved = load_segmentation_dataset(busi.prepare(busi_raw, tmp_path / "b1",
                                                   options=PrepareOptions(exclude_from=(tmp_path / "b.txt",))))
    assert first in {s.id for s in moved.split("train")} and moved.meta["split"]["exclude_from"]["moved_to_train"] == 1


def test_exclude_from_with_published_split_refuses_a_listed_test_image(kvasir_raw, tmp_path):
    names = sorted(p.name for p in (kvasir_raw / "Kvasir-SEG" / "images").iterdir())
    path = lvmmed_json(tmp_path / "Kvasir.json", names[:9], names[9:11], names[11:])
    (tmp_path / "list.txt").write_text(names[12] + "\n")
    raises(lambda: kvasir_seg.prepare(kvasir_raw, tmp_path / "out", options=PrepareOptions(
        split_file=path, exclude_from=(tmp_path / "list.txt",))), "published split", names[12])
    (tmp_path / "ok.txt").write_text(names[0] + "\n")  # a listed train image: fine, recorded
    ds = load_segmentation_dataset(kvasir_seg.prepare(kvasir_raw, tmp_path / "ok", options=PrepareOptions(
        split_file=path, exclude_from=(tmp_path / "ok.txt",))))
    assert ds.meta["split"]["exclude_from"]["in_test"] == 0
    assert ds.meta["split"]["exclude_from"]["by_split"]["train"] == 1


def test_stem_rule():
    assert splits.stem_of("OPC-00543/12-15-2003-Head and Neck/1-009.dcm") == "1-009"
    assert splits.stem_of("Brats18_CBICA_ANZ_1") == "brats18_cbica_anz_1"
    assert splits.stem_of("case.nii.gz") == "case" and splits.stem_of("benign (3).png") == "benign (3)"
    assert splits.stem_of("1.3.6.1.4.1.14519") == "1.3.6.1.4.1.14519"


def test_an_option_the_adapter_cannot_honour_is_refused_in_one_line(tmp_path, capsys):
    """--split-file and --exclude-from reach every adapter; one that has no published split (JSRT) or
    does not apply exclusion lists (DRIVE) refuses them with one line and exit 2, writing nothing."""
    from medssl_bench.harness.app.cli import main

    listed = tmp_path / "list.txt"
    listed.write_text("x\n")
    for dataset, option, value in (("jsrt", "--split-file", listed), ("drive", "--exclude-from", listed)):
        code = main(["data", "prepare", dataset, "--src", str(tmp_path), "--out", str(tmp_path / "out"),
                     option, str(value)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0, err
        assert f"{option} is not supported for {dataset}" in err
    assert not (tmp_path / "out").exists()
