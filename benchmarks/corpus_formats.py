"""On-disk format of a packed pretraining corpus (issue #21, item 1): measure, don't guess.

Candidates x sample encodings:
  formats   : lmdb (lmdb), wds (webdataset tar shards read through wids.ShardListDataset),
              litdata (litdata.optimize + litdata.StreamingDataset), mds (mosaicml-streaming
              MDSWriter + streaming.StreamingDataset)
  encodings : png (lossless, cv2.imencode level 3 / cv2.imdecode) and raw (uint8 array as .npy bytes)

Synthetic corpus: N (default 10,000) slices, 90% grayscale 256x256 uint8, 10% RGB 256x256x3;
content = smooth low-frequency field + Gaussian blobs inside an elliptical "body" mask on a black
background + Gaussian noise (sigma 3), so PNG compresses like a real CT/MR slice, not like noise.
Every image is a deterministic function of its index (the read check compares against it).

For each format x encoding it measures (each in a fresh subprocess, so peak RSS is per run):
  pack : images/s with one process, and with encode work spread over 2 processes (a Pool feeding a
         single writer; litdata uses its own optimize(num_workers=2)), peak RSS (ru_maxrss of the
         packer + its children), bytes on disk, number of files.  The image "decode" of the real
         `bench corpus pack` is stood in for by the synthetic generator (its own rate is reported).
  read : ms/image single process for random order and in order (map-style access by integer
         index), after warm-up with the OS page cache warm (every file of the pack is read once
         first); split into fetch (bytes) and decode; then a torch DataLoader over a map-style
         Dataset with a seeded shuffled RandomSampler, num_workers=2, batch 64, as images/s, and
         the RSS of each worker after the pass.

How to run (NOT in /work/main/.venv: the candidates live in their own venv):
    python3.11 -m venv /tmp/fmtvenv
    echo /work/main/.venv/lib/python3.11/site-packages \
        > /tmp/fmtvenv/lib/python3.11/site-packages/mainvenv.pth     # numpy, torch, cv2, Pillow
    /tmp/fmtvenv/bin/pip install lmdb==3.0.0 webdataset==1.0.2 wids==0.1.11 litdata==0.2.76 psutil
    /tmp/fmtvenv/bin/pip install --no-deps mosaicml-streaming==0.13.0   # its deps pin numpy<2.2
    /tmp/fmtvenv/bin/pip install 'xxhash<4' zstd brotli python-snappy catalogue 'transformers<5'
    /tmp/fmtvenv/bin/python benchmarks/corpus_formats.py [--n 10000] [--work /tmp/corpus_fmt]
Writes benchmarks/results/corpus_formats_cpu.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT = os.path.join(HERE, "results", "corpus_formats_cpu.json")
SIDE = 256
SHARD_BYTES = 64 * 1024 * 1024  # 64 MiB shards / chunks for every sharded format
PNG_LEVEL = 3
FORMATS = ["lmdb", "wds", "litdata", "mds"]
ENCODINGS = ["png", "raw"]

# ---------------------------------------------------------------- synthetic corpus
_NOISE = None


def _noise_bank():
    global _NOISE
    if _NOISE is None:
        rng = np.random.default_rng(12345)
        _NOISE = rng.normal(0, 3.0, size=(8, SIDE, SIDE)).astype(np.float32)
    return _NOISE


def gen_image(i: int) -> np.ndarray:
    """Deterministic 'medical-looking' slice number i (gray, or RGB when i % 10 == 0)."""
    import cv2

    rng = np.random.default_rng(i)
    field = cv2.resize(rng.random((6, 6), dtype=np.float32), (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
    img = 60.0 + 90.0 * field
    yy, xx = np.ogrid[:SIDE, :SIDE]
    for _ in range(3):
        cy, cx = rng.integers(60, 196, size=2)
        r = rng.uniform(8, 30)
        img += rng.uniform(-60, 80) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    ay, ax = rng.uniform(90, 124, size=2)
    body = ((yy - 128) / ay) ** 2 + ((xx - 128) / ax) ** 2 <= 1.0
    noise = np.roll(_noise_bank()[i % 8], shift=int(i * 37 % SIDE), axis=1)
    img = np.where(body, img + noise, noise * 0.3)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if i % 10 == 0:  # ~10% RGB (e.g. dermoscopy / endoscopy frames)
        tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        img = np.clip(img[..., None] * tint, 0, 255).astype(np.uint8)
    return img


# ---------------------------------------------------------------- encodings
def encode(img: np.ndarray, enc: str) -> bytes:
    if enc == "png":
        import cv2

        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
        assert ok
        return buf.tobytes()
    bio = io.BytesIO()
    np.save(bio, img, allow_pickle=False)
    return bio.getvalue()


def decode(b, enc: str) -> np.ndarray:
    if enc == "png":
        import cv2

        return cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)
    return np.load(io.BytesIO(b), allow_pickle=False)


# The synthetic corpus is rendered once into one flat file (gray slices 64 KiB, RGB 192 KiB, back
# to back); the packers read it with os.pread (no mmap, so the page cache does not show up in the
# packer's RSS). This stands in for "decode the DICOM/NIfTI/PNG source", whose cost is not a
# property of the output format; the generator's own cost is reported under codec.
CORPUS_FILE = None


def _offset(i):
    return i * SIDE * SIDE + ((i + 9) // 10) * 2 * SIDE * SIDE


def source_image(i: int) -> np.ndarray:
    shape = (SIDE, SIDE, 3) if i % 10 == 0 else (SIDE, SIDE)
    fd = os.open(CORPUS_FILE, os.O_RDONLY)
    try:
        b = os.pread(fd, int(np.prod(shape)), _offset(i))
    finally:
        os.close(fd)
    return np.frombuffer(b, np.uint8).reshape(shape)


def _render(i):
    return i, gen_image(i).tobytes()


def render_corpus(n, path):
    import multiprocessing as mp

    if os.path.exists(path) and os.path.getsize(path) == _offset(n):
        return 0.0
    t = time.perf_counter()
    with open(path + ".tmp", "wb") as f, mp.get_context("fork").Pool(2) as pool:
        for i, b in pool.imap(_render, range(n), chunksize=64):
            assert f.tell() == _offset(i)
            f.write(b)
    os.replace(path + ".tmp", path)
    return time.perf_counter() - t


def make_sample(i_enc):
    i, enc = i_enc
    return i, encode(source_image(i), enc)


def litdata_fn(i, enc=None):  # litdata.optimize's fn (enc bound with functools.partial)
    return {"i": i, "img": encode(source_image(i), enc)}


# ---------------------------------------------------------------- writers
def _samples(n, enc, procs):
    if procs <= 1:
        for i in range(n):
            yield make_sample((i, enc))
    else:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(procs) as pool:
            yield from pool.imap(make_sample, ((i, enc) for i in range(n)), chunksize=32)


def pack(fmt, enc, n, out, procs):
    if fmt == "lmdb":
        import lmdb

        os.makedirs(out, exist_ok=True)
        env = lmdb.open(out, map_size=1 << 36, subdir=True, meminit=False, map_async=True)
        txn = env.begin(write=True)
        for i, b in _samples(n, enc, procs):
            txn.put(b"%08d" % i, b)
            if i % 1000 == 999:
                txn.commit()
                txn = env.begin(write=True)
        txn.put(b"__len__", str(n).encode())
        txn.commit()
        env.sync()
        env.close()
    elif fmt == "wds":
        import tarfile

        import webdataset as wds

        pattern = os.path.join(out, "shard-%06d.tar")
        os.makedirs(out, exist_ok=True)
        with wds.ShardWriter(pattern, maxsize=SHARD_BYTES, maxcount=10**9, verbose=0) as sink:
            for i, b in _samples(n, enc, procs):
                sink.write({"__key__": "%08d" % i, enc if enc == "png" else "npy": b})
        shards = []
        for name in sorted(f for f in os.listdir(out) if f.endswith(".tar")):
            with tarfile.open(os.path.join(out, name)) as tf:
                ns = len({m.name.split(".")[0] for m in tf.getmembers()})
            shards.append({"url": name, "nsamples": ns, "filesize": os.path.getsize(os.path.join(out, name))})
        with open(os.path.join(out, "index.json"), "w") as f:  # the wids shard-index descriptor
            json.dump({"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "corpus", "shardlist": shards}, f)
    elif fmt == "mds":
        from streaming import MDSWriter

        with MDSWriter(out=out, columns={"i": "int", "img": "bytes"}, size_limit=SHARD_BYTES, compression=None) as w:
            for i, b in _samples(n, enc, procs):
                w.write({"i": i, "img": b})
    elif fmt == "litdata":
        import functools

        from litdata import optimize

        optimize(
            fn=functools.partial(litdata_fn, enc=enc),
            inputs=list(range(n)),
            output_dir=out,
            chunk_bytes=SHARD_BYTES,
            num_workers=procs,
            start_method="fork",
            verbose=False,
        )
    else:
        raise ValueError(fmt)


def _identity(url):
    return url


class Reader:
    """get(k) -> encoded bytes of sample k (map-style, integer index)."""

    def __init__(self, fmt, enc, out):
        self.fmt, self.enc, self.out, self.h = fmt, enc, out, None

    def open(self):
        if self.fmt == "lmdb":
            import lmdb

            env = lmdb.open(self.out, readonly=True, lock=False, readahead=False, meminit=False)
            self.h = (env, env.begin(buffers=False))
        elif self.fmt == "wds":
            import wids

            with open(os.path.join(self.out, "index.json")) as f:
                spec = json.load(f)
            shards = [dict(s, url=os.path.join(self.out, s["url"])) for s in spec["shardlist"]]
            self.h = wids.ShardListDataset(shards, localname=_identity, transformations=[], lru_size=64)
        elif self.fmt == "mds":
            from streaming import StreamingDataset

            self.h = StreamingDataset(local=self.out, remote=None, shuffle=False, batch_size=1)
        elif self.fmt == "litdata":
            from litdata import StreamingDataset

            self.h = StreamingDataset(self.out)
        return self

    def __len__(self):
        if self.h is None:
            self.open()
        if self.fmt == "lmdb":
            return int(self.h[1].get(b"__len__"))
        return len(self.h)

    def get(self, k: int):
        if self.h is None:
            self.open()
        k = int(k)
        if self.fmt == "lmdb":
            return self.h[1].get(b"%08d" % k), k
        if self.fmt == "wds":
            s = self.h[k]
            v = s[".png"] if ".png" in s else s[".npy"]
            return (v.getvalue() if hasattr(v, "getvalue") else bytes(v)), int(s["__key__"])
        s = self.h[k]
        return s["img"], int(s["i"])


class MapDS:  # the map-style Dataset a DataLoader sees (torch.utils.data.Dataset protocol)
    def __init__(self, reader):
        self.r = reader

    def __len__(self):
        return len(self.r)

    def __getitem__(self, k):
        import torch

        b, _ = self.r.get(k)
        return torch.from_numpy(decode(b, self.r.enc))


def list_collate(batch):
    return batch


# ---------------------------------------------------------------- measurement helpers
def dir_stats(out):
    nbytes = nfiles = 0
    for root, _, files in os.walk(out):
        for f in files:
            nfiles += 1
            nbytes += os.path.getsize(os.path.join(root, f))
    return nbytes, nfiles


def warm_page_cache(out):
    for root, _, files in os.walk(out):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def rss_mb(p=None):
    import psutil

    m = (p or psutil.Process()).memory_info()
    return round(m.rss / 2**20, 1), round((m.rss - m.shared) / 2**20, 1)


_LIB = {"lmdb": "lmdb", "wds": "webdataset", "litdata": "litdata", "mds": "streaming"}


def run_pack(fmt, enc, n, out, procs):
    import importlib

    import cv2  # noqa: F401  (imports are not part of the pack time; their RSS is in ..._before_pack)

    importlib.import_module(_LIB[fmt])
    shutil.rmtree(out, ignore_errors=True)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    pack(fmt, enc, n, out, procs)
    dt = time.perf_counter() - t
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    nbytes, nfiles = dir_stats(out)
    return {
        "procs": procs,
        "seconds": round(dt, 2),
        "images_per_s": round(n / dt, 1),
        "peak_rss_mb_writer": round(self_peak, 1),
        "rss_mb_writer_before_pack": round(rss0, 1),
        "peak_rss_mb_largest_child": round(child_peak, 1),
        "bytes": nbytes,
        "mb": round(nbytes / 2**20, 1),
        "bytes_per_image": round(nbytes / n),
        "files": nfiles,
    }


def run_read(fmt, enc, n, out, m):
    import psutil
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    warm_page_cache(out)
    t = time.perf_counter()
    r = Reader(fmt, enc, out).open()
    open_s = time.perf_counter() - t
    assert len(r) == n, (len(r), n)
    for k in range(0, n, max(1, n // 200)):  # warm-up: touch every shard
        r.get(k)
    # correctness: sample k is image k (for litdata with 2 pack workers the order may differ)
    chk = [0, 1, 10, 4321 % n, n - 1]
    index_is_input_order = True
    for k in chk:
        b, i = r.get(k)
        index_is_input_order &= i == k
        assert np.array_equal(decode(b, enc), source_image(i)), (fmt, enc, k)
    res = {"open_s": round(open_s, 3), "index_k_is_input_k": bool(index_is_input_order)}
    rng = np.random.default_rng(0)
    for order, idx in (("random", rng.permutation(n)[:m]), ("in_order", np.arange(m))):
        t = time.perf_counter()
        bufs = [r.get(int(k))[0] for k in idx]
        t_fetch = time.perf_counter() - t
        t = time.perf_counter()
        for b in bufs:
            decode(b, enc)
        t_dec = time.perf_counter() - t
        del bufs
        res[order] = {
            "fetch_ms": round(1e3 * t_fetch / m, 4),
            "decode_ms": round(1e3 * t_dec / m, 4),
            "ms_per_image": round(1e3 * (t_fetch + t_dec) / m, 4),
        }
    res["main_rss_mb_after_single_process_reads"] = rss_mb()[0]
    # DataLoader: map-style dataset, seeded shuffled sampler, 2 workers, one full pass
    if fmt == "mds":
        ds_reader = r  # mosaic's dataset must be created in the parent (shared-memory registry)
    else:
        if fmt == "lmdb":  # py-lmdb refuses a second open of the same env in a forked child
            r.h[1].abort()
            r.h[0].close()
        ds_reader = Reader(fmt, enc, out)  # each worker opens its own handle lazily
    g = torch.Generator().manual_seed(0)
    dl = DataLoader(MapDS(ds_reader), batch_size=64, sampler=RandomSampler(range(n), generator=g),
                    num_workers=2, collate_fn=list_collate, persistent_workers=True,
                    multiprocessing_context="fork")
    it = iter(dl)
    first = next(it)  # worker start-up excluded from the timing
    cnt = len(first)
    kids0 = {p.pid: rss_mb(p) for p in psutil.Process().children()}  # forked: inherits the parent's pages
    t = time.perf_counter()
    for batch in it:
        cnt += len(batch)
    dt = time.perf_counter() - t
    kids = psutil.Process().children()
    res["dataloader_2workers"] = {
        "images_per_s": round((cnt - len(first)) / dt, 1),
        "images": cnt,
        "worker_rss_mb": [rss_mb(p)[0] for p in kids],
        "worker_rss_minus_file_backed_mb": [rss_mb(p)[1] for p in kids],
        "worker_uss_mb": [round(p.memory_full_info().uss / 2**20, 1) for p in kids],
        # growth during the pass (after the first batch -> end): what reading itself costs a worker
        "worker_rss_growth_mb": [round(rss_mb(p)[0] - kids0[p.pid][0], 1) for p in kids if p.pid in kids0],
        "worker_anon_growth_mb": [round(rss_mb(p)[1] - kids0[p.pid][1], 1) for p in kids if p.pid in kids0],
    }
    del it, dl
    return res


def codec_micro(m=300):
    """Per-image encode/decode cost of the two encodings and of Pillow vs cv2 for PNG."""
    import cv2
    from PIL import Image

    imgs = [gen_image(i) for i in range(m)]
    out = {}
    t = time.perf_counter()
    _ = [gen_image(i) for i in range(m)]
    out["synthetic_generator_ms"] = round(1e3 * (time.perf_counter() - t) / m, 3)
    for name, enc_f, dec_f in (
        ("png_cv2_level3", lambda a: encode(a, "png"), lambda b: decode(b, "png")),
        ("png_pillow_default", lambda a: _pil_png(a), lambda b: np.asarray(Image.open(io.BytesIO(b)))),
        ("raw_npy", lambda a: encode(a, "raw"), lambda b: decode(b, "raw")),
    ):
        t = time.perf_counter()
        bs = [enc_f(a) for a in imgs]
        te = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(2):
            dec = [dec_f(b) for b in bs]
        td = (time.perf_counter() - t) / 2
        assert all(np.array_equal(a, d) for a, d in zip(imgs, dec))
        out[name] = {"encode_ms": round(1e3 * te / m, 3), "decode_ms": round(1e3 * td / m, 3),
                     "bytes_per_image": round(sum(map(len, bs)) / m)}
    out["cv2_threads"] = cv2.getNumThreads()
    return out


def _pil_png(a):
    from PIL import Image

    bio = io.BytesIO()
    Image.fromarray(a).save(bio, format="PNG")
    return bio.getvalue()


def _versions():
    from importlib import metadata

    v = {}
    for d in ("lmdb", "webdataset", "wids", "litdata", "mosaicml-streaming", "numpy", "torch", "opencv-python",
              "pillow", "psutil"):
        try:
            md = metadata.metadata(d)
            lic = md.get("License-Expression") or md.get("License") or ""
            if not lic or len(lic) > 60:
                lic = "; ".join(c.split(" :: ")[-1] for c in md.get_all("Classifier") or [] if "License" in c) or lic[:60]
            v[d] = {"version": metadata.version(d), "license_metadata": lic}
        except metadata.PackageNotFoundError:
            v[d] = None
    return v


# Documented properties (from each library's docs / source at the versions above; not tested here
# except where "tested" is said).
PROPERTIES = {
    "lmdb": {
        "random_access_by_index": "native key lookup; the integer index is the key we write (b'%08d' % i)",
        "reads_s3": "no: memory-mapped local file only",
        "resume_killed_pack": "yes by construction: committed transactions survive a kill; restart from the "
                              "first missing key (the pack commits every 1,000 images)",
        "parallel_writers": "no (one write transaction at a time); encode in a pool, write in one process",
        "files": "1 data.mdb + lock.mdb",
    },
    "wds": {
        "random_access_by_index": "via wids.ShardListDataset over a shard list with per-shard sample counts "
                                  "(index.json we build); each shard's tar is scanned/mmapped on first open",
        "reads_s3": "yes for streaming (webdataset 'pipe:' / gopen URLs, e.g. pipe:aws s3 cp ...); wids "
                    "downloads whole shards into a local cache_dir before indexing them",
        "resume_killed_pack": "no built-in resume; finished shards are valid tars, a resumable packer can "
                              "restart at the next shard (ShardWriter(start_shard=...))",
        "parallel_writers": "yes, one ShardWriter per process with distinct shard names",
        "files": "one .tar per shard + index.json (+ .lock files wids creates next to local shards)",
    },
    "litdata": {
        "random_access_by_index": "native: StreamingDataset.__getitem__(int) via index.json chunk table",
        "reads_s3": "yes: input_dir='s3://bucket/prefix' (chunks downloaded to a local cache, max_cache_size)",
        "resume_killed_pack": "documented: optimize(..., use_checkpoint=True) resumes; mode='append' adds",
        "parallel_writers": "yes: optimize(num_workers=k) (each worker writes its own chunks; sample order "
                            "then differs from input order unless keep_data_ordered)",
        "files": "chunk-*.bin + index.json",
    },
    "mds": {
        "random_access_by_index": "native: StreamingDataset.__getitem__(int) / get_item via index.json",
        "reads_s3": "yes: StreamingDataset(remote='s3://...', local=cache_dir) downloads shards on demand",
        "resume_killed_pack": "no documented resume for MDSWriter; parallel writers into sub-dirs + "
                              "streaming.base.util.merge_index can rebuild an index from finished parts",
        "parallel_writers": "yes with one MDSWriter per sub-directory + merge_index",
        "files": "shard.*.mds + index.json",
    },
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--m", type=int, default=2000, help="images per single-process read timing")
    ap.add_argument("--work", default="/tmp/corpus_fmt")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--encodings", default=",".join(ENCODINGS))
    ap.add_argument("--no-pack2", action="store_true", help="skip the 2-process pack")
    ap.add_argument("--out", default=RESULT)
    ap.add_argument("--_child", nargs=4, metavar=("MODE", "FMT", "ENC", "PROCS"))
    a = ap.parse_args()
    global CORPUS_FILE
    os.makedirs(a.work, exist_ok=True)
    CORPUS_FILE = os.path.join(a.work, f"corpus_{a.n}.u8")
    if a._child:
        mode, fmt, enc, procs = a._child
        out = os.path.join(a.work, f"{fmt}_{enc}")
        r = run_pack(fmt, enc, a.n, out, int(procs)) if mode == "pack" else run_read(fmt, enc, a.n, out, a.m)
        r["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
        print("RESULT " + json.dumps(r), flush=True)
        return

    def child(*args):
        cmd = [sys.executable, os.path.abspath(__file__), "--n", str(a.n), "--m", str(a.m), "--work", a.work,
               "--_child", *map(str, args)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not lines:
            sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
            return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
        return json.loads(lines[-1][7:])

    t0 = time.time()
    render_s = render_corpus(a.n, CORPUS_FILE)
    res = {
        "benchmark": "corpus_formats",
        "issue": "#21 item 1",
        "device": "cpu (x86_64, 2 cores)",
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
        "corpus": {"n": a.n, "gray_256x256": a.n - (a.n + 9) // 10, "rgb_256x256x3": (a.n + 9) // 10,
                   "content": "smooth field + gaussian blobs in an elliptical body mask, noise sigma 3"},
        "shard_bytes": SHARD_BYTES,
        "png_level_cv2": PNG_LEVEL,
        "single_process_read_images": a.m,
        "page_cache": "warm (every file of the pack read once before timing)",
        "versions": _versions(),
        "properties": PROPERTIES,
        "codec": codec_micro(),
        "corpus_render_s_2proc": round(render_s, 1),
        "runs": {},
    }
    print(json.dumps(res["codec"]), flush=True)
    for fmt in a.formats.split(","):
        for enc in a.encodings.split(","):
            key = f"{fmt}/{enc}"
            row = {}
            if not a.no_pack2:
                row["pack_2proc"] = child("pack", fmt, enc, 2)
            row["pack_1proc"] = child("pack", fmt, enc, 1)  # the pack that is read below
            row["read"] = child("read", fmt, enc, 0) if "error" not in row["pack_1proc"] else {"error": "no pack"}
            res["runs"][key] = row
            print(key, json.dumps(row), f"[{time.time() - t0:.0f}s]", flush=True)
            shutil.rmtree(os.path.join(a.work, f"{fmt}_{enc}"), ignore_errors=True)
    res["loadavg_end"] = os.getloadavg()
    res["wall_s"] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
