"""Reading a packed corpus (harness.corpus_pack) by sample index, in O(1) per read.

Sample k lies in shard k // shard_images at row k % shard_images of that shard's offset index
(shard-NNNNN.idx.npy: byte offset and size of the pixel member, taken from the tar headers when the
shard was written). A read is one `os.pread` of those bytes and their decode: no tar is scanned, so a
shuffled epoch costs what an ordered one does, and a worker's memory is the few offset tables it has
mapped (16 bytes per image, in the page cache) and open file descriptors (an LRU of 64 shards).

wids' `ShardListDataset` reads the same shards by index too, but indexes a tar by scanning its headers
each time it opens it; with more shards than its LRU holds, a shuffled order re-scans a shard for most
reads (measured: 7.3x the ordered read at 11 shards, benchmarks/README.md), so bench reads the offsets
it wrote. For a folder on http(s)/s3 storage, wids' downloader (curl, the AWS CLI) fetches each shard and
its index into a local cache on first use. The AWS CLI takes its settings from the environment as ever
(AWS_ENDPOINT_URL for a store that is not AWS, such as MinIO; credentials; region); tests/test_packed_s3.py
reads a pack from moto's S3 server that way.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

from medssl_bench.harness.corpus import Corpus
from medssl_bench.harness.corpus_pack import (DECODERS, ENCODERS, PACK_INFO, index_name, packed_dir,
                                              shard_name)
from medssl_bench.harness.errors import UserError

OPEN_SHARDS = 64  # file descriptors per process; reopening one costs microseconds


def load_packed(folder: Path) -> dict:
    """pack.json of a complete packed folder, or one clear error."""
    info_path = Path(folder) / PACK_INFO
    if not info_path.is_file():
        raise UserError(f"not a packed corpus (no {PACK_INFO}); run `bench corpus pack`", folder)
    return complete_pack(json.loads(info_path.read_text()), folder)


def complete_pack(info: dict, where) -> dict:
    """`info` (a pack.json) if its pack finished, else one clear error naming `where`."""
    if not info.get("complete"):
        raise UserError("this pack did not finish; run `bench corpus pack` again to complete it", where)
    return info


def find_packed(corpus: Corpus, image_size: int) -> Path | None:
    """The complete packed folder of `corpus` with the smallest max side >= image_size, or None."""
    best = None
    for folder in sorted(corpus.dir.glob("packed-*")):
        try:
            info = load_packed(folder)
        except (UserError, ValueError):
            continue
        if info["max_side"] >= image_size and (best is None or info["max_side"] < best[0]):
            best = (info["max_side"], folder)
    return best[1] if best else None


def packed_for_run(corpus: Corpus, image_size: int, recorded: dict | None) -> dict | None:
    """What a run reads its images from: None (the source files) or its packed copy's record {folder,
    max_side, format, encoding, digest}. A new run (`recorded` None) takes find_packed's copy; a resumed
    one the copy it recorded, unchanged (same shard digests), or the source files if it recorded none."""
    if recorded is None:
        folder = find_packed(corpus, image_size)
    elif "packed" in recorded:
        folder = packed_dir(corpus, recorded["packed"]["max_side"])
    else:
        return None
    if folder is None:
        return None
    info = load_packed(folder)
    record = {"folder": str(folder), "max_side": info["max_side"], "format": info["format"],
              "encoding": info["encoding"],
              "digest": hashlib.sha256(json.dumps(info["sha256"], sort_keys=True).encode()).hexdigest()[:16]}
    if recorded is not None and record["digest"] != recorded["packed"]["digest"]:
        raise UserError("the run was trained from another pack of this corpus (shard digests differ); "
                        "its images would change on resume", folder)
    return record


class PackedImages:
    """Sample k of a packed folder, or of its copy at a URL (`cache_dir` then holds the downloads).
    State is per process (opened on first read after a fork), so DataLoader workers share nothing."""

    def __init__(self, location: str | Path, cache_dir: str | Path | None = None):
        self.location = str(location)
        self.remote = "://" in self.location
        if self.remote and cache_dir is None:
            raise UserError("reading a packed corpus from a URL needs a cache folder (cache_dir)", self.location)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        info = (complete_pack(json.loads(Path(self._local(PACK_INFO)).read_text()), self.location) if self.remote
                else load_packed(Path(self.location)))
        self.n_images, self.shard_images = info["n_images"], info["shard_images"]
        self.decode = DECODERS["." + ENCODERS[info["encoding"]][0]]
        self._pid, self._open = None, OrderedDict()

    def __len__(self) -> int:
        return self.n_images

    def __getstate__(self) -> dict:  # a spawned worker opens its own files
        return {**self.__dict__, "_pid": None, "_open": OrderedDict()}

    def pixels(self, index: int) -> np.ndarray:
        """Image `index` as stored, uint8 (H, W) or (H, W, 3); `--augment device` workers ship it as it is."""
        if not 0 <= index < self.n_images:
            raise IndexError(f"sample {index} of a packed corpus of {self.n_images}")
        shard, row = divmod(index, self.shard_images)
        fd, offsets = self._shard(shard)
        offset, size = offsets[row]
        return self.decode(os.pread(fd, int(size), int(offset)))

    def rgb(self, index: int):
        from PIL import Image

        return Image.fromarray(self.pixels(index)).convert("RGB")

    def _shard(self, number: int) -> tuple[int, np.ndarray]:
        if self._pid != os.getpid():  # forked: the parent's descriptors are not this process's to close
            self._pid, self._open = os.getpid(), OrderedDict()
        if number in self._open:
            self._open.move_to_end(number)
            return self._open[number]
        offsets = np.load(self._local(index_name(number)), mmap_mode="r", allow_pickle=False)
        opened = self._open[number] = (os.open(self._local(shard_name(number)), os.O_RDONLY), offsets)
        if len(self._open) > OPEN_SHARDS:
            os.close(self._open.popitem(last=False)[1][0])
        return opened

    def _local(self, name: str) -> str:
        """The file's local path: in the folder, or downloaded once into the cache (whole files, renamed
        when complete, so a concurrent reader never sees half a file)."""
        if not self.remote:
            return str(Path(self.location) / name)
        local = self.cache_dir / hashlib.sha256(self.location.encode()).hexdigest()[:16] / name
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(f".{name}.{os.getpid()}.part")
            try:
                download(f"{self.location.rstrip('/')}/{name}", str(partial))
                os.replace(partial, local)
            finally:
                partial.unlink(missing_ok=True)
        return str(local)


def download(url: str, local: str) -> None:
    """The object at `url` into the file `local`, through wids' downloader; a failure is one UserError
    naming the URL and the tool's own reason. Our handlers replace wids' shell commands for http(s) and s3:
    its curl saves an HTTP error page as the file, and an `os.system` failure is a bare AssertionError."""
    from wids.wids_dl import default_cmds, download_file

    try:
        download_file(url, local, handlers={**default_cmds, "http": _curl, "https": _curl, "s3": _aws_s3_cp})
    except (AssertionError, OSError, ValueError) as err:  # wids' other schemes (gs, file, pipe)
        raise UserError(f"download failed: {err}", url) from None
    if not os.path.isfile(local):
        raise UserError("download failed: the downloader wrote no file", url)


def _curl(url: str, local: str) -> None:
    _run(["curl", "--fail", "--silent", "--show-error", "--location", "--output", local, url], url)


def _aws_s3_cp(url: str, local: str) -> None:
    _run([aws_cli(url), "s3", "cp", "--only-show-errors", url, local], url)


def aws_cli(url: str) -> str:
    """The `aws` command: the one installed beside this Python first (requirements.txt pins it, and a
    venv's bin/ is on PATH only while activated), else the one on PATH."""
    beside = Path(sys.executable).parent / "aws"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("aws")
    if not found:
        raise UserError("reading s3:// needs the AWS CLI, and no `aws` was found (pip install awscli)", url)
    return found


def _run(command: list[str], url: str) -> None:
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"download failed: `{command[0]}` is not installed", url) from None
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise UserError(f"download failed: {said[-1] if said else f'{command[0]} exited {done.returncode}'}", url)
