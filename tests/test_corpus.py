"""The corpus manifest (harness.corpus) and `bench corpus build | show | synth`."""
from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medssl_bench.harness import corpus as corpus_mod
from medssl_bench.harness.app.cli.corpus import corpus_app
from medssl_bench.harness.corpus import build_corpus, list_corpora, resolve_corpus
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.workspace import Workspace
from tests.conftest import write_dicom


def image(seed: int, shape=(24, 24)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ct_scans: 3 PNGs (one in a sub-folder) + a CSV; root/fundus: 1 JPEG + dataset.json;
    root/loose.png; hidden and text files that must be ignored."""
    root = tmp_path / "data"
    save(root / "ct_scans" / "a.png", image(1))
    save(root / "ct_scans" / "b.png", image(2))
    save(root / "ct_scans" / "deep" / "c.png", image(3))
    (root / "ct_scans" / "labels.csv").write_text("a,1\n")
    save(root / "fundus" / "eye.jpg", np.dstack([image(4), image(5), image(6)]))
    (root / "fundus" / "dataset.json").write_text(json.dumps({"modality": "OP", "synthetic": True}))
    save(root / "loose.png", image(7))
    save(root / ".hidden.png", image(8))
    (root / "README.txt").write_text("hi")
    return root


def test_counts_per_dataset_modality_and_ignored(tree: Path, workspace):
    corpus = build_corpus([tree], workspace)
    info = corpus.info
    assert {name: row["images"] for name, row in info["datasets"].items()} == {
        "ct_scans": 3, "fundus": 1, "data": 1}
    assert info["datasets"]["ct_scans"]["modality"] == "ct"  # guessed from the folder name
    assert info["datasets"]["fundus"]["modality"] == "fundus"  # dataset.json's DICOM code "OP"
    assert info["datasets"]["data"]["modality"] == "unknown"
    assert info["ignored"] == 4  # labels.csv, dataset.json, .hidden.png, README.txt
    assert info["n_images"] == 5 and info["synthetic"] == "mixed"
    entry = next(e for e in corpus.entries if e["dataset"] == "fundus")
    assert entry["channels"] == 3 and entry["format"] == "jpeg" and entry["synthetic"] is True
    assert entry["slice"] is None and Path(entry["path"]).is_absolute()
    manifest = (workspace.corpora / corpus.id / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 5 and json.loads(manifest[0]).keys() == {
        "dataset", "modality", "path", "slice", "hash", "height", "width", "channels", "format",
        "synthetic"}
    assert json.loads((workspace.corpora / corpus.id / "corpus.json").read_text())["id"] == corpus.id


def test_identical_pixels_are_kept_once_whatever_the_encoding(tree: Path, workspace):
    shutil.copy(tree / "ct_scans" / "a.png", tree / "ct_scans" / "a_copy.png")
    save(tree / "ct_scans" / "a_again.bmp", image(1))  # same pixels, other format
    info = build_corpus([tree], workspace).info
    assert info["datasets"]["ct_scans"]["images"] == 3
    assert info["n_duplicates"] == 2 and info["datasets"]["ct_scans"]["duplicates"] == 2
    assert {Path(d["path"]).name for d in info["duplicates"]} == {"a_copy.png", "a_again.bmp"}
    assert all(Path(d["same_as"]).name == "a.png" for d in info["duplicates"])


def test_id_is_content_addressed(tree: Path, workspace, tmp_path: Path):
    first = build_corpus([tree], workspace)
    info_bytes = (first.dir / "corpus.json").read_bytes()
    again = build_corpus([tree], workspace)
    assert again.id == first.id
    assert (again.dir / "corpus.json").read_bytes() == info_bytes  # same files rewritten
    moved = tmp_path / "elsewhere" / "data"
    shutil.move(str(tree), moved)
    after_move = build_corpus([moved], workspace)
    assert after_move.id == first.id
    assert all(e["path"].startswith(str(moved)) for e in after_move.entries)
    pixels = image(2)
    pixels[0, 0] ^= 1
    save(moved / "ct_scans" / "b.png", pixels)  # one pixel changed
    assert build_corpus([moved], workspace).id != first.id


def test_a_workspace_inside_the_root_is_not_indexed(tree: Path):
    inside = Workspace(tree / "workspace")
    save(tree / "workspace" / "runs" / "r1" / "preview.png", image(99))
    first = build_corpus([tree], inside)
    again = build_corpus([tree], inside)
    assert first.info["n_images"] == again.info["n_images"] == 5
    assert first.info["ignored"] == again.info["ignored"]
    assert not any("preview" in e["path"] for e in again.entries)


def test_unreadable_files_are_listed_and_the_build_goes_on(tree: Path, workspace):
    (tree / "ct_scans" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tree / "ct_scans" / "empty.dcm").write_bytes(b"")
    info = build_corpus([tree], workspace).info
    assert info["n_images"] == 5
    reasons = {Path(u["path"]).name: u["reason"] for u in info["unreadable"]}
    assert set(reasons) == {"broken.png", "empty.dcm"}
    assert reasons["broken.png"].startswith("cannot decode") and str(tree) not in reasons["broken.png"]


def test_dicom_modality_tag_and_volume_slices(tmp_path: Path, workspace):
    root = tmp_path / "root"
    write_dicom(root / "misc" / "scan.dcm", image(9, (16, 16)), Modality="MR")
    x, y, z = np.mgrid[0:10, 0:12, 0:4]
    (root / "vols").mkdir()
    nib.save(nib.Nifti1Image((x + y * 3 + z * 50).astype(np.float32), np.eye(4)), root / "vols" / "v.nii.gz")
    corpus = build_corpus([root], workspace)
    assert corpus.info["datasets"]["misc"]["modality"] == "mr"
    assert corpus.info["datasets"]["vols"]["slices_from_volumes"] == 4
    slices = sorted(e["slice"] for e in corpus.entries if e["dataset"] == "vols")
    assert slices == [0, 1, 2, 3]


def test_bad_roots_are_user_errors(tmp_path: Path, workspace):
    with pytest.raises(UserError, match="does not exist") as err:
        build_corpus([tmp_path / "missing"], workspace)
    assert str(tmp_path / "missing") in str(err.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no image files found"):
        build_corpus([tmp_path / "empty"], workspace)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("not a png")
    with pytest.raises(UserError, match="none of its image files could be read; first: .*x.png"):
        build_corpus([tmp_path / "bad"], workspace)
    (tmp_path / "ds").mkdir()
    save(tmp_path / "ds" / "d" / "a.png", image(1))
    (tmp_path / "ds" / "d" / "dataset.json").write_text("{not json")
    with pytest.raises(UserError, match="dataset.json: cannot read JSON"):
        build_corpus([tmp_path / "ds"], workspace)
    (tmp_path / "ds" / "d" / "dataset.json").write_text('{"synthetic": "no"}')
    with pytest.raises(UserError, match='dataset.json: "synthetic" must be true or false'):
        build_corpus([tmp_path / "ds"], workspace)


def test_parallel_decoding_gives_the_same_corpus(tree: Path, workspace, monkeypatch):
    serial = build_corpus([tree], workspace)
    calls, pools = [], []
    real_pool = corpus_mod._decode_pool
    monkeypatch.setattr(corpus_mod, "_decode_pool", lambda workers: pools.append(workers) or real_pool(workers))
    monkeypatch.setattr(corpus_mod, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(corpus_mod.os, "cpu_count", lambda: 2)
    parallel = build_corpus([tree], workspace, progress=lambda done, total: calls.append((done, total)))
    assert pools == [2]
    assert parallel.id == serial.id and parallel.entries == serial.entries
    assert calls[0] == (0, 5) and calls[-1] == (5, 5)


def test_resolve_by_id_prefix_manifest_folder_and_images(tree: Path, workspace):
    built = build_corpus([tree], workspace)
    assert resolve_corpus(built.id, workspace).id == built.id
    assert resolve_corpus(built.id[:4], workspace).id == built.id
    assert resolve_corpus(str(built.dir / "manifest.jsonl"), workspace).id == built.id
    assert resolve_corpus(str(built.dir), workspace).entries == built.entries
    assert resolve_corpus(str(tree), workspace).id == built.id  # a folder of images is built
    assert [info["id"] for info in list_corpora(workspace)] == [built.id]


def test_resolve_errors(tree: Path, workspace):
    with pytest.raises(UserError, match=r"no corpus 'abc' in .*corpora; run `bench corpus build"):
        resolve_corpus("abc", workspace)
    for name in ("aa11", "aa22"):
        (workspace.corpora / name).mkdir(parents=True)
        (workspace.corpora / name / "manifest.jsonl").write_text("")
    with pytest.raises(UserError, match="ambiguous"):
        resolve_corpus("aa", workspace)
    with pytest.raises(UserError, match="corpus .* is empty"):
        resolve_corpus("aa11", workspace)
    with pytest.raises(UserError, match="no such corpus id, manifest or folder"):
        resolve_corpus(str(tree / "nothing-here"), workspace)
    with pytest.raises(UserError, match="not a corpus manifest"):
        resolve_corpus(str(tree / "README.txt"), workspace)

    built = build_corpus([tree], workspace)
    (tree / "ct_scans" / "b.png").unlink()
    with pytest.raises(UserError, match=r"1 listed file\(s\) no longer exist, first .*b.png"):
        resolve_corpus(built.id, workspace)
    assert resolve_corpus(built.id, workspace, check_files=False).id == built.id


# ------------------------------------------------------------------------------------- CLI


def test_cli_build_and_show(tree: Path, workspace):
    (tree / "ct_scans" / "broken.png").write_text("nope")
    runner = CliRunner()
    result = runner.invoke(corpus_app, ["build", "--root", str(tree), "--workspace", str(workspace.root)])
    assert result.exit_code == 0, result.output
    corpus_id = list_corpora(workspace)[0]["id"]
    assert corpus_id in result.output and "ct_scans" in result.output and "fundus" in result.output
    assert "broken.png" in result.output and "1 unreadable" in result.output
    assert f"bench pretrain --method simclr --corpus {corpus_id}" in result.output

    listing = runner.invoke(corpus_app, ["show"], env={"BENCH_HOME": str(workspace.root)})
    assert listing.exit_code == 0 and corpus_id in listing.output
    detail = runner.invoke(corpus_app, ["show", corpus_id[:6], "--workspace", str(workspace.root)])
    assert detail.exit_code == 0 and "ct_scans" in detail.output and str(tree) in detail.output


def test_cli_user_error_is_one_line_and_exit_2(tmp_path: Path, workspace, monkeypatch, capsys):
    from medssl_bench.harness.app.cli import main

    code = main(["corpus", "build", "--root", str(tmp_path / "missing"), "--workspace", str(workspace.root)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "does not exist" in err and "missing" in err
    assert main(["corpus", "show", "feed", "--workspace", str(workspace.root)]) == 2
    assert "no corpus 'feed'" in capsys.readouterr().err


def test_cli_synth_then_build(tmp_path: Path, workspace, monkeypatch):
    calls = {}

    def synthesize_corpus(out, n, seed, size=96, families=None, progress=None):
        calls.update(n=n, seed=seed, size=size)
        for i in range(n):
            save(Path(out) / ("ct" if i % 2 else "us") / f"{i}.png", image(seed * 100 + i, (size, size)))
            if progress:
                progress(1)  # the real generator reports increments
        return {"out": Path(out), "n_images": n, "per_family": {"ct": n // 2, "us": n - n // 2},
                "files": [], "seed": seed}

    phantoms = types.ModuleType("medssl_bench.downstream.phantoms")
    phantoms.synthesize_corpus = synthesize_corpus
    monkeypatch.setitem(sys.modules, "medssl_bench.downstream.phantoms", phantoms)
    out = tmp_path / "phantoms"
    args = ["synth", "--out", str(out), "--n", "6", "--seed", "3", "--size", "20",
            "--workspace", str(workspace.root)]
    result = CliRunner().invoke(corpus_app, args)
    assert result.exit_code == 0, result.output
    assert calls == {"n": 6, "seed": 3, "size": 20}
    assert f"bench corpus build --root {out}" in result.output and not list_corpora(workspace)

    result = CliRunner().invoke(corpus_app, args + ["--build"])
    assert result.exit_code == 0, result.output
    corpus_id = list_corpora(workspace)[0]["id"]
    assert corpus_id in result.output
