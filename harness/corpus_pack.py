"""A packed corpus: every image of a corpus decoded once, resized to a maximum side and written to
WebDataset tar shards (raw .npy or lossless PNG samples) for O(1) reads by index (harness.packed_reader;
benchmarks/README.md, "Packed corpus format", for the measurement behind the format).

    <workspace>/corpora/<id>/packed-<max side>/
        pack.json              what was packed: corpus id, max side, encoding, counts, per-shard sha256
        shards.json            the shard list in wids' dataset-description format (wids_version 1)
        shard-00000.tar        samples <k>.npy or <k>.png (the pixels) + <k>.json (the manifest entry)
        shard-00000.idx.npy    byte offset and size of each sample's pixels in the tar

Sample k is manifest entry k: provenance (source path, slice, pixel hash of the full-size decode,
dataset, modality) stays in the manifest, and a copy travels in each sample's json. Shards hold a
fixed number of images, so a shard is one unit of work: decoded by one worker process, written to
a temporary name and renamed when whole (its index first). A killed pack keeps its whole shards and
redoes the rest; memory stays at one shard per worker, whatever the corpus size. The tar files are
plain tar: any WebDataset reader streams them, and wids' ShardListDataset reads shards.json by index.
"""
from __future__ import annotations

import concurrent.futures
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from medssl_bench.harness import imageio
from medssl_bench.harness.corpus import Corpus, _decode_pool, pixel_hash
from medssl_bench.harness.errors import CorruptImageError, UserError
from medssl_bench.harness.fsutil import atomic_path, sha256_file, write_json_atomic

PACK_INFO, SHARD_LIST = "pack.json", "shards.json"
FORMAT = "webdataset-tar"
# raw: .npy, decoded in ~0.05 ms for a 256 px slice; png: lossless, ~2.4x smaller, ~0.9 ms to decode
# (benchmarks/README.md, "Packed corpus format"): raw by default, since decoding is what a loader core pays.
ENCODINGS = ("raw", "png")
DEFAULT_MAX_SIDE = 512
DEFAULT_SHARD_IMAGES = 1000
PNG_LEVEL = 1  # zlib level 1: most of level 9's size at a fraction of the time (benchmarks/README.md)

Progress = Callable[[int, int], None]


def packed_dir(corpus: Corpus, max_side: int) -> Path:
    return corpus.dir / f"packed-{max_side}"


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.tar"


def index_name(number: int) -> str:
    return f"shard-{number:05d}.idx.npy"


def sample_key(index: int) -> str:
    return f"{index:09d}"


def fit_max_side(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is at most `max_side` (area interpolation, aspect kept); smaller
    images are stored as decoded."""
    height, width = pixels.shape[:2]
    if max(height, width) <= max_side:
        return pixels
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def encode_png(pixels: np.ndarray) -> bytes:
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    if not ok:
        raise RuntimeError(f"PNG encoding failed for an image of shape {pixels.shape}")
    return data.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB) if pixels.ndim == 3 else pixels


def encode_npy(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(pixels), allow_pickle=False)
    return buffer.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


ENCODERS = {"raw": ("npy", encode_npy), "png": ("png", encode_png)}
DECODERS = {".npy": decode_npy, ".png": decode_png}


# ------------------------------------------------------------------------------------- pack


def pack_corpus(corpus: Corpus, *, max_side: int = DEFAULT_MAX_SIDE, shard_images: int = DEFAULT_SHARD_IMAGES,
                encoding: str = "raw", workers: int | None = None, progress: Progress | None = None) -> Path:
    """Pack `corpus` (see the module docstring); returns the packed folder. Resumes a killed pack."""
    if max_side < 16:
        raise UserError(f"--max-side must be at least 16 pixels, got {max_side}")
    if encoding not in ENCODINGS:
        raise UserError(f"unknown encoding '{encoding}'; choose one of: {', '.join(ENCODINGS)}")
    out = packed_dir(corpus, max_side)
    settings = {"corpus": corpus.id, "format": FORMAT, "encoding": encoding, "max_side": max_side,
                "shard_images": shard_images, **({"png_level": PNG_LEVEL} if encoding == "png" else {})}
    _claim(out, settings)
    total = corpus.info.get("n_images") or len(corpus.entries)
    n_shards = -(-total // shard_images)
    done = {n for n in range(n_shards) if (out / shard_name(n)).is_file()}
    workers = workers or min(os.cpu_count() or 1, 8)
    images_done = sum(min(shard_images, total - n * shard_images) for n in done)
    if progress:
        progress(images_done, total)
    digests: dict[int, str] = {}  # sha256 of each shard written now, taken by its worker
    with _pool(workers) as pool:
        pending = set()
        for number, entries in _shards(corpus.manifest_path, shard_images):
            if number in done:
                continue
            pending.add(pool.submit(write_shard, out, number, number * shard_images, entries, max_side, encoding))
            if len(pending) >= 2 * workers:  # bounded: at most two shards' entries in flight per worker
                images_done = _collect(pending, digests, images_done, total, progress)
        while pending:
            images_done = _collect(pending, digests, images_done, total, progress)
    return _finish(out, settings, total, n_shards, shard_images, digests)


def _collect(pending, digests, images_done, total, progress) -> int:
    """Wait for at least one shard; record its digest and advance the progress."""
    finished, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
    for future in finished:
        pending.discard(future)
        number, count, digest = future.result()
        digests[number] = digest
        images_done += count
        if progress:
            progress(images_done, total)
    return images_done


def _claim(out: Path, settings: dict) -> None:
    """Start or continue a pack in `out`; a folder packed with other settings is never mixed into."""
    info_path = out / PACK_INFO
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        differs = {k: (info.get(k), v) for k, v in settings.items() if info.get(k) != v}
        if differs:
            what = ", ".join(f"{k} {old!r} (asked {new!r})" for k, (old, new) in differs.items())
            raise UserError(f"already packed with other settings: {what}; remove the folder to repack", out)
        return
    write_json_atomic(info_path, {**settings, "complete": False})


def _shards(manifest: Path, shard_images: int) -> Iterator[tuple[int, list[dict]]]:
    """(shard number, its manifest entries), streamed from the manifest file: memory holds one shard."""
    batch, number = [], 0
    with open(manifest) as handle:
        for line in handle:
            if line.strip():
                batch.append(json.loads(line))
            if len(batch) == shard_images:
                yield number, batch
                batch, number = [], number + 1
    if batch:
        yield number, batch


def write_shard(out: Path, number: int, first: int, entries: list[dict], max_side: int,
                encoding: str) -> tuple[int, int, str]:
    """Decode, resize and encode the shard's images (sample keys first, first + 1, ...) into
    shard-NNNNN.tar under a temporary name, renamed when whole. Runs in a worker process. A source that
    no longer decodes to its manifest hash (changed or gone since the build) stops the pack: the
    corpus id would no longer name what was packed. Returns (number, images, sha256 of the shard). Temporary
    files a killed pack left for this shard are removed first."""
    path = out / shard_name(number)
    suffix, encode = ENCODERS[encoding]
    with atomic_path(path, clear_stale=True) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index, entry in enumerate(entries, first):
                pixels = _decode_checked(entry)
                key = sample_key(index)
                _add(tar, f"{key}.{suffix}", encode(fit_max_side(pixels, max_side)))
                _add(tar, f"{key}.json", json.dumps(entry, sort_keys=True).encode())
        # renamed before the shard: a whole shard always has its index
        with atomic_path(out / index_name(number), clear_stale=True) as index_tmp, open(index_tmp, "wb") as handle:
            np.save(handle, pixel_offsets(tmp, suffix), allow_pickle=False)
        digest = sha256_file(tmp)  # here, in parallel and from the page cache, not re-read at the end
    return number, len(entries), digest


def pixel_offsets(shard: Path, suffix: str) -> np.ndarray:
    """(n, 2) int64: byte offset and size of each sample's pixel member, in sample order (read back with
    the standard library's tar parser, so the index describes the file as any tar reader sees it)."""
    with tarfile.open(shard, "r") as tar:
        rows = [(m.offset_data, m.size) for m in tar.getmembers() if m.name.endswith(f".{suffix}")]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def _decode_checked(entry: dict) -> np.ndarray:
    try:
        pixels = imageio.read_pixels(entry["path"], entry.get("slice"))
    except CorruptImageError as err:
        raise UserError(f"cannot pack: {err}; rebuild the corpus with `bench corpus build`") from None
    if pixel_hash(pixels) != entry["hash"]:
        where = entry["path"] + (f" slice {entry['slice']}" if entry.get("slice") is not None else "")
        raise UserError(f"cannot pack: {where} decodes to other pixels than when the corpus was built "
                        "(the file changed); rebuild the corpus with `bench corpus build`")
    return pixels


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size, member.mode = len(data), 0o644  # mtime 0: the same corpus packs to the same bytes
    tar.addfile(member, io.BytesIO(data))


def _pool(workers: int) -> concurrent.futures.Executor:
    return _decode_pool(workers) if workers > 1 else _InlinePool()


class _InlinePool(concurrent.futures.Executor):
    """One worker: run each shard in this process (no fork, same code path)."""

    def submit(self, fn, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - re-raised by future.result()
            future.set_exception(err)
        return future


def _finish(out: Path, settings: dict, total: int, n_shards: int, shard_images: int, digests: dict[int, str]) -> Path:
    """Write shards.json and the completed pack.json; only shards finished by an earlier, killed run are hashed here."""
    shards = [{"url": shard_name(n), "nsamples": min(shard_images, total - n * shard_images)}
              for n in range(n_shards)]
    write_json_atomic(out / SHARD_LIST, {"__kind__": "wids-shard-index-v1", "wids_version": 1,
                                         "name": f"corpus {settings['corpus']}", "shardlist": shards})
    hashes = {shard_name(n): digests[n] if n in digests else sha256_file(out / shard_name(n)) for n in range(n_shards)}
    info = {**settings, "complete": True, "n_images": total, "n_shards": n_shards,
            "bytes": sum((out / s["url"]).stat().st_size for s in shards), "sha256": hashes}
    write_json_atomic(out / PACK_INFO, info)
    return out
