"""What a loader worker spends per image on each method's views: the CPU path (`augment: cpu`, decode + the method's
lightly transform + uint8) against the device path (`augment: device`, decode + the image as shipped + the parameter
draws), and what the device then spends per batch making the views (harness.device_views).

One process, one thread (a worker's lot), a 512 x 512 PNG decoded by the harness's own loader, each method's
`benchmark` views at 224 px, each sample seeded as in training (its own (seed, epoch, index)). Per sample, interleaved
so that a busy machine slows all five alike: decode, the read of the same image from a packed copy (`bench corpus
pack`, raw .npy) as a PIL image, the CPU path's views of the decoded image, the device path's worker half on it, and
the device path's whole worker share from the pack (the stored array read and shipped as it is, as `bench pretrain
--augment device` reads a packed corpus); each figure is the median over samples. A path's cost per image from the
PNG = decode + its views. The device side
runs on `--device` (default cpu, for reference).

    python benchmarks/view_costs.py                       # writes benchmarks/results/view_costs_cpu.json
    python benchmarks/view_costs.py --device cuda --out benchmarks/results/view_costs_h100.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import shutil
import tempfile
import time
from pathlib import Path

from medssl_bench.harness.process import configure_process

configure_process()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from medssl_bench.harness.config import build_transform, resolve_config  # noqa: E402
from medssl_bench.harness.data import ViewsDataset  # noqa: E402
from medssl_bench.harness.device_views import (DeviceViewsPreprocessor, DeviceViewsTransform,  # noqa: E402
                                               check_device_views, collate_device_views)
from medssl_bench.harness.corpus import build_corpus  # noqa: E402
from medssl_bench.harness.corpus_pack import pack_corpus  # noqa: E402
from medssl_bench.harness.imageio import load_rgb  # noqa: E402
from medssl_bench.harness.packed_reader import PackedImages  # noqa: E402
from medssl_bench.harness.workspace import Workspace  # noqa: E402
from medssl_bench.harness.provenance import code_version, package_versions  # noqa: E402
from medssl_bench.methods import get_method  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Ark is timed on its views alone: its labels come from the labelled loader, not its transform
METHODS = ("simclr", "moco", "byol", "barlowtwins", "vicregl", "swav", "dino", "lvmmed", "peac", "models_genesis",
           "ark")


def test_image(path: Path, side: int = 512) -> None:
    """A textured 512 px RGB PNG: colour waves + mild noise (1.1 MB; PIL decodes it in a few ms)."""
    yy, xx = np.mgrid[0:side, 0:side]
    waves = np.stack([128 + 100 * np.sin(xx / 9) * np.cos(yy / 13), 128 + 90 * np.cos(xx / 7 + yy / 11),
                      (xx * 0.5 + yy * 0.3) % 256], -1)
    pixels = np.clip(waves + np.random.default_rng(0).normal(0, 2, waves.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def interleaved_ms(calls: list, n: int) -> list[float]:
    """Median ms of each call over samples 1..n, the calls taking turns per sample (sample 0 warms up)."""
    times: list[list[float]] = [[] for _ in calls]
    for k in range(n + 1):
        for call, spent in zip(calls, times):
            started = time.perf_counter()
            call(k)
            spent.append((time.perf_counter() - started) * 1e3)
    return [round(statistics.median(spent[1:]), 3) for spent in times]


def device_batch_ms(dataset, plan, batch: int, device: str, repeats: int) -> float:
    items = [dataset[(0, k)] for k in range(batch)]
    preprocessor = DeviceViewsPreprocessor(plan).to(device)
    times = []
    for _ in range(repeats + 1):
        data = collate_device_views(items)
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        views = preprocessor(data)["inputs"]
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1e3)
        assert len(views) == len(plan) + sum(view.grid is not None for view in plan)  # VICRegL: grids after
    return round(statistics.median(times[1:]), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="samples timed per method")
    parser.add_argument("--repeats", type=int, default=3, help="device-side batches timed")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32, help="batch for the device-side cost")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--out", type=Path, default=RESULTS / "view_costs_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a loader worker's share

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.png"
        test_image(path)
        image = load_rgb(path)
        entries = [image] * max(1 + args.images, args.batch)  # the device side's batch reads as many
        (Path(tmp) / "corpus" / "one").mkdir(parents=True)
        shutil.copy(path, Path(tmp) / "corpus" / "one" / "image.png")
        corpus = build_corpus([Path(tmp) / "corpus"], Workspace(Path(tmp) / "ws"))
        packed = PackedImages(pack_corpus(corpus, max_side=512, workers=1))  # `bench corpus pack`'s raw .npy
        rows = {}
        for name in args.methods:
            cls = get_method(name)
            cfg = resolve_config(cls, "benchmark", {"image_size": args.image_size}, {"augment": "device"})
            transform, n_image_views = build_transform(cls, cfg)
            plan = check_device_views(cls, cfg)
            cpu = ViewsDataset(entries, transform, seed=0, loader=lambda e: e, n_image_views=n_image_views)
            dev = ViewsDataset(entries, DeviceViewsTransform(plan), seed=0, loader=lambda e: e, n_image_views=0)
            # from a pack the device path's worker reads the stored array (PackedImages.pixels) and ships it as it is
            dev_packed = ViewsDataset(range(len(entries)), DeviceViewsTransform(plan), seed=0,
                                      loader=lambda e: packed.pixels(0), n_image_views=0)
            decode, packed_read, cpu_views, dev_views, dev_from_packed = interleaved_ms(
                [lambda k: load_rgb(path), lambda k: packed.rgb(0), lambda k: cpu[(0, k)], lambda k: dev[(0, k)],
                 lambda k: dev_packed[(0, k)]], args.images)
            cpu_ms, dev_ms = round(decode + cpu_views, 3), round(decode + dev_views, 3)
            torch.set_num_threads(os.cpu_count() or 1)  # the device side is the training process's
            batch_ms = device_batch_ms(dev, plan, args.batch, args.device, args.repeats)
            torch.set_num_threads(1)
            views = [f"{len([v for v in plan if v.crop.size == s])}x{s[0]}" for s in dict.fromkeys(
                v.crop.size for v in plan)]
            rows[name] = {"views": " + ".join(views), "decode_ms": decode, "cpu_path_views_ms": cpu_views,
                          "device_path_worker_ms": dev_views, "cpu_path_ms_per_image": cpu_ms,
                          "packed_read_ms": packed_read,
                          "device_path_from_packed_ms_per_image": dev_from_packed,
                          "device_path_host_ms_per_image": dev_ms, "speed_up": round(cpu_ms / dev_ms, 1),
                          f"device_side_ms_per_batch_{args.batch}": batch_ms}
            print(name, rows[name], flush=True)
    result = {
        "what": "loader-worker ms per image (one process, one thread) for each method's benchmark views, CPU path "
                "(decode + lightly transform + uint8) vs device path (decode + image as shipped + parameter draws); "
                "device-side ms per batch making the views (harness.device_views)",
        "image": "512 x 512 RGB PNG (textured), decoded by harness.imageio.load_rgb",
        "image_size": args.image_size,
        "device": f"{args.device} ({platform.machine()}, {os.cpu_count()} cores)" if args.device == "cpu" else
        f"{torch.cuda.get_device_name()} (host {platform.machine()}, {os.cpu_count()} cores)",
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "samples": {"timed_per_method": args.images, "device_batches": args.repeats, "device_batch": args.batch},
        "methods": rows, "code": code_version(),
        "versions": {k: v for k, v in package_versions().items() if k in ("torch", "torchvision", "kornia",
                                                                         "lightly", "pillow")},
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
