"""Packing a 3D corpus and reading it back (issue #21): throughput, peak memory, shuffled vs in-order reads.

Writes N synthetic CT-like NIfTI volumes (256 x 256 x D, int16, gzip) — at least 10,000 axial slices —
builds the corpus, packs it with `bench corpus pack`'s code (harness.corpus_pack) at max side 256, and
measures:
- pack: images/s and peak RSS (the packing process and, separately, its largest worker), for the
  whole corpus and for a quarter of it: memory must not grow with the corpus;
- reads through PackedImages (what `bench pretrain` uses), one process, warm page cache: ms per image
  in manifest order and in a shuffled order (goal: shuffled <= 1.5 x in order);
- the same two orders reading the source volumes directly (imageio.read_pixels with its 4-volume
  cache, the path before packing), on a sample, for the comparison.

    .venv/bin/python benchmarks/corpus_pack.py [--volumes 40 --depth 256] [--encoding raw|png] [--out DIR]

Writes benchmarks/results/corpus_pack_cpu_<encoding>.json and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from medssl_bench.harness import imageio
from medssl_bench.harness.corpus import build_corpus
from medssl_bench.harness.packed_reader import PackedImages
from medssl_bench.harness.provenance import code_version
from medssl_bench.harness.workspace import Workspace

RESULTS = Path(__file__).resolve().parent / "results"  # corpus_pack_cpu_<encoding>.json
SIDE = 256


def write_volumes(folder: Path, n: int, depth: int) -> None:
    """CT-like volumes: an ellipsoid body of soft tissue (~40 HU) with smooth structures and noise, air outside."""
    folder.mkdir(parents=True, exist_ok=True)
    z, y, x = np.meshgrid(np.linspace(-1, 1, depth), np.linspace(-1, 1, SIDE), np.linspace(-1, 1, SIDE),
                          indexing="ij")
    for k in range(n):
        path = folder / f"ct_{k:03d}.nii.gz"
        if path.exists():
            continue
        rng = np.random.default_rng(k)
        body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1
        organs = sum(np.exp(-((x - rng.uniform(-.5, .5)) ** 2 + (y - rng.uniform(-.4, .4)) ** 2
                              + (z - rng.uniform(-.8, .8)) ** 2) / rng.uniform(.01, .05)) for _ in range(6))
        hu = np.where(body, 40 + 200 * organs + rng.normal(0, 20, body.shape), -1000).astype(np.int16)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), np.eye(4)), path)


def read_ms(read, indices) -> float:
    started = time.perf_counter()
    for index in indices:
        read(int(index))
    return (time.perf_counter() - started) * 1000 / len(indices)


def pack_in_child(manifest_dir: Path, workers: int, encoding: str) -> dict:
    """Pack in a fresh process so its peak RSS is its own: {seconds, rss_main_mib, rss_worker_mib}."""
    code = f"""
import json, resource, time
from medssl_bench.harness.corpus import load_corpus
from medssl_bench.harness.corpus_pack import pack_corpus
corpus = load_corpus({str(manifest_dir)!r})
t = time.perf_counter()
pack_corpus(corpus, max_side={SIDE}, shard_images=1000, encoding={encoding!r}, workers={workers})
print(json.dumps({{"seconds": time.perf_counter() - t,
  "rss_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  "rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=40)
    parser.add_argument("--depth", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pack-bench"))
    parser.add_argument("--encoding", default="raw", choices=("raw", "png"))
    parser.add_argument("--direct-sample", type=int, default=300, help="slices read from the volumes directly")
    args = parser.parse_args()
    workers = min(os.cpu_count() or 1, 8)
    write_volumes(args.out / "src" / "ct", args.volumes, args.depth)
    quarter = args.out / "quarter" / "ct"
    quarter.mkdir(parents=True, exist_ok=True)
    for path in sorted((args.out / "src" / "ct").glob("*.nii.gz"))[: args.volumes // 4]:
        if not (quarter / path.name).exists():
            os.link(path, quarter / path.name)

    results = {"benchmark": "corpus_pack", "date": time.strftime("%Y-%m-%d %H:%M"),
               "device": f"cpu ({platform.machine()}, {os.cpu_count()} cores)", "load_average": os.getloadavg(),
               "code": code_version(), "settings": {"volumes": args.volumes, "depth": args.depth, "side": SIDE,
                                                    "max_side": SIDE, "shard_images": 1000, "workers": workers,
                                                    "encoding": args.encoding}}
    for label, root in (("quarter", args.out / "quarter"), ("whole", args.out / "src")):
        ws = Workspace(args.out / f"ws-{label}")
        started = time.perf_counter()
        corpus = build_corpus([root], ws)
        build_s = time.perf_counter() - started
        shutil.rmtree(corpus.dir / f"packed-{SIDE}", ignore_errors=True)
        packed = pack_in_child(corpus.dir, workers, args.encoding)
        results[label] = {"slices": len(corpus.entries), "build_s": round(build_s, 1),
                          "pack_s": round(packed["seconds"], 1),
                          "pack_images_per_s": round(len(corpus.entries) / packed["seconds"], 1),
                          "pack_rss_main_mib": round(packed["rss_main_mib"]),
                          "pack_rss_worker_mib": round(packed["rss_worker_mib"]),
                          "packed_mib": round(sum(p.stat().st_size for p in (corpus.dir / f"packed-{SIDE}")
                                                  .glob("*.tar")) / 2**20, 1)}
    entries = corpus.entries
    reader = PackedImages(str(corpus.dir / f"packed-{SIDE}"))
    n = len(entries)
    shuffled = np.random.default_rng(0).permutation(n)
    read_ms(reader.pixels, range(min(n, 2000)))  # warm the page cache and the shard indexes
    reads = {"packed_in_order_ms": read_ms(reader.pixels, range(n)),
             "packed_shuffled_ms": read_ms(reader.pixels, shuffled)}
    reads["packed_ratio"] = reads["packed_shuffled_ms"] / reads["packed_in_order_ms"]
    direct = lambda k: imageio.read_pixels(entries[k]["path"], entries[k]["slice"])  # noqa: E731
    sample = args.direct_sample
    imageio._load_nifti_volume.cache_clear()
    reads["direct_in_order_ms"] = read_ms(direct, range(sample))
    imageio._load_nifti_volume.cache_clear()
    reads["direct_shuffled_ms"] = read_ms(direct, shuffled[:sample])
    reads["direct_ratio"] = reads["direct_shuffled_ms"] / reads["direct_in_order_ms"]
    results["reads"] = {k: round(v, 3) for k, v in reads.items()}
    result = RESULTS / f"corpus_pack_cpu_{args.encoding}.json"
    result.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"results written to {result}")


if __name__ == "__main__":
    main()
