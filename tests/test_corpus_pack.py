"""`bench corpus pack` (harness.corpus_pack): the packed copy returns the pixels of the direct decode,
decodes each volume once and never again on shuffled reads, resumes after a kill to the same bytes,
refuses stale sources and mixed settings, reads over http, and pretraining from it equals
pretraining from the source files."""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medssl_bench.harness import imageio
from medssl_bench.harness.app.cli import main
from medssl_bench.harness.corpus import build_corpus
from medssl_bench.harness.corpus_pack import fit_max_side, pack_corpus, packed_dir, shard_name
from medssl_bench.harness.packed_reader import PackedImages, load_packed
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.runs import read_run
from medssl_bench.harness.workspace import Workspace


@pytest.fixture
def phantoms(tmp_path):
    """96 phantom images, 48 px: PNG, JPEG, DICOM and NIfTI volumes (ct, mr) -> (workspace, corpus)."""
    from medssl_bench.downstream.phantoms import synthesize_corpus

    synthesize_corpus(tmp_path / "src", n=96, seed=0, size=48)
    ws = Workspace(tmp_path / "ws")
    return ws, build_corpus([tmp_path / "src"], ws)


def _direct(entry: dict) -> np.ndarray:
    return imageio.read_pixels(entry["path"], entry.get("slice"))


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_packed_reads_equal_the_direct_decode_and_volumes_are_decoded_once(phantoms, encoding):
    ws, corpus = phantoms
    volumes = {e["path"] for e in corpus.entries if e["path"].endswith(".nii.gz")}
    assert len(volumes) >= 2 and len(corpus.entries) > len(volumes)
    imageio._load_nifti_volume.cache_clear()
    folder = pack_corpus(corpus, max_side=64, shard_images=20, encoding=encoding, workers=1)  # in this process
    # entries of one volume are consecutive in the manifest, so each volume is decoded once while packing
    assert imageio._load_nifti_volume.cache_info().misses == len(volumes)
    info = load_packed(folder)
    assert info["n_images"] == len(corpus.entries) and info["n_shards"] == -(-len(corpus.entries) // 20)

    imageio._load_nifti_volume.cache_clear()
    packed = PackedImages(str(folder))
    order = np.random.default_rng(0).permutation(len(corpus.entries))
    read = {int(index): packed.pixels(int(index)) for index in order}
    assert imageio._load_nifti_volume.cache_info().misses == 0  # a shuffled epoch decodes no volume
    for index, pixels in read.items():  # max side 64 > 48: stored as decoded, bit for bit
        assert np.array_equal(pixels, _direct(corpus.entries[index])), index

    small = PackedImages(str(pack_corpus(corpus, max_side=32, shard_images=50, encoding=encoding, workers=1)))
    for index in order[:20]:
        expected = fit_max_side(_direct(corpus.entries[index]), 32)
        assert max(expected.shape[:2]) == 32 and np.array_equal(small.pixels(int(index)), expected)


def test_fit_max_side_keeps_the_aspect_and_leaves_small_images_alone():
    image = np.arange(60 * 30, dtype=np.uint8).reshape(60, 30)
    assert fit_max_side(image, 20).shape == (20, 10)
    assert fit_max_side(image, 60) is image
    assert fit_max_side(np.zeros((7, 100, 3), np.uint8), 50).shape == (4, 50, 3)  # 3.5 rounds to 4


def test_a_killed_pack_resumes_to_the_same_bytes(phantoms, tmp_path):
    ws, corpus = phantoms
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "medssl_bench.harness", "corpus", "pack", corpus.id, "--workspace", str(ws.root),
           "--max-side", "40", "--shard-images", "4", "--workers", "1"]
    folder = packed_dir(corpus, 40)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(folder.glob("shard-*.tar"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    whole = sorted(p.name for p in folder.glob("shard-*.tar"))
    assert 3 <= len(whole) < 24 and not load_packed_or_none(folder)  # stopped part-way, not complete
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    fresh = ws.corpora / "fresh"
    shutil.copytree(corpus.dir, fresh, ignore=shutil.ignore_patterns("packed-*"))
    from medssl_bench.harness.corpus import load_corpus

    again = pack_corpus(load_corpus(fresh), max_side=40, shard_images=4, workers=2)
    assert load_packed(folder)["sha256"] == load_packed(again)["sha256"]  # resumed = uninterrupted, shard by shard
    assert not list(folder.glob(".*.tmp"))


def load_packed_or_none(folder: Path):
    try:
        return load_packed(folder)
    except UserError:
        return None


def test_other_settings_and_changed_sources_are_refused_in_one_line(phantoms):
    ws, corpus = phantoms
    pack_corpus(corpus, max_side=64, shard_images=20, workers=1)
    with pytest.raises(UserError, match=r"already packed with other settings: shard_images 20 \(asked 10\)"):
        pack_corpus(corpus, max_side=64, shard_images=10, workers=1)
    with pytest.raises(UserError, match=r"encoding 'raw' \(asked 'png'\)"):
        pack_corpus(corpus, max_side=64, shard_images=20, encoding="png", workers=1)
    png = next(e for e in corpus.entries if e["path"].endswith(".png"))
    pixels = imageio.read_pixels(png["path"])
    from PIL import Image

    Image.fromarray(255 - pixels).save(png["path"])
    with pytest.raises(UserError, match=f"cannot pack: {png['path']} decodes to other pixels"):
        pack_corpus(corpus, max_side=48, shard_images=20, workers=1)


def test_the_shards_are_webdataset_tars_that_wids_reads_by_index(phantoms):
    import io

    import wids

    ws, corpus = phantoms
    folder = pack_corpus(corpus, max_side=64, shard_images=40, workers=1)
    dataset = wids.ShardListDataset(str(folder / "shards.json"), localname=str, transformations=[])
    assert len(dataset) == len(corpus.entries)
    for index in (0, 39, 40, len(corpus.entries) - 1):
        sample = dataset[index]
        assert np.array_equal(np.load(io.BytesIO(sample[".npy"].getvalue())), _direct(corpus.entries[index]))
        assert json.loads(sample[".json"].getvalue()) == corpus.entries[index]


def test_shards_read_over_http_through_the_download_cache(phantoms, tmp_path):
    ws, corpus = phantoms
    folder = pack_corpus(corpus, max_side=64, shard_images=40, workers=1)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{folder.name}"
        remote = PackedImages(url, cache_dir=str(tmp_path / "cache"))
        for index in (0, 41, len(corpus.entries) - 1):
            assert np.array_equal(remote.pixels(index), _direct(corpus.entries[index]))
        assert sorted(p.name for p in (tmp_path / "cache").rglob("*.tar")) == [shard_name(0), shard_name(1),
                                                                               shard_name(2)]
        assert not list((tmp_path / "cache").rglob("*.part"))
    finally:
        server.shutdown()


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_pretraining_from_the_pack_equals_pretraining_from_the_files(phantoms, capsys, augment):
    """Device views read the packed grey pixels as stored (one channel, no PIL image) and still train bit for bit
    as from the decoded files."""
    ws, corpus = phantoms
    common = ["pretrain", "--workspace", str(ws.root), "--method", "simclr", "--corpus", corpus.id,
              "--image-size", "32", "--batch-size", "16", "--epochs", "1", "--num-workers", "0", "--augment", augment]
    assert main([*common, "--name", "files"]) == 0
    pack_corpus(corpus, max_side=64, shard_images=30, workers=1)  # 64 >= 48: lossless, so the same pixels
    assert main([*common, "--name", "packed"]) == 0
    runs = ws.runs
    assert "packed" not in read_run(runs / "files")["corpus"]
    recorded = read_run(runs / "packed")["corpus"]["packed"]
    assert recorded["max_side"] == 64 and recorded["folder"] == str(packed_dir(corpus, 64))
    assert json.loads((runs / "packed" / "backbone.json").read_text())["corpus"]["packed"] == recorded
    files, packed = (load_file(str(runs / n / "backbone.safetensors")) for n in ("files", "packed"))
    assert all(torch.equal(files[k], packed[k]) for k in files)


def test_pack_and_show_on_the_command_line(phantoms, capsys):
    ws, corpus = phantoms
    assert main(["corpus", "pack", corpus.id, "--workspace", str(ws.root), "--max-side", "40", "--encoding", "png",
                 "--shard-images", "50", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    folder = packed_dir(corpus, 40)
    n = len(corpus.entries)
    assert f"{n} images in {-(-n // 50)} shard(s)" in out and str(folder) in out
    assert main(["corpus", "show", corpus.id, "--workspace", str(ws.root)]) == 0
    assert f"packed, max side 40, png: {n} images in {-(-n // 50)} shard(s)" in capsys.readouterr().out
    assert main(["corpus", "pack", corpus.id, "--workspace", str(ws.root), "--max-side", "8"]) == 2
    assert "--max-side" in capsys.readouterr().err
    assert main(["corpus", "pack", corpus.id, "--workspace", str(ws.root), "--encoding", "jpeg"]) == 2
    assert "unknown encoding 'jpeg'; choose one of: raw, png" in capsys.readouterr().err
