"""What the CPU path's worker saves by shipping uint8 views straight from the PIL image and by not restoring its
global RNGs after each sample (harness.data: `uint8_pixels`, `seeded_rngs`; issue #21).

One process, one thread (a worker's lot), each lightly-view method's views of one textured image, each sample seeded
as in training. Per sample the two paths take turns in alternating order (so load hits both alike):
- `float`: the method's transform as built (lightly's ToTensor to float, then `to_uint8`), as before d35d360;
- `uint8`: what ViewsDataset now runs (ToTensor replaced by torchvision's pil_to_tensor).
Both restore the RNGs, as the main process does. Apart: the seeding alone, with the restore (main process) and
without it (a loader worker). Each figure is the median of the rounds' means.

    python benchmarks/worker_share.py           # writes benchmarks/results/worker_share_cpu.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from medssl_bench.harness.process import configure_process

configure_process()  # before torch loads its OpenMP runtime (thread wait policy), as `bench` does

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import medssl_bench.harness.data as data  # noqa: E402
from medssl_bench.harness.config import build_transform, resolve_config  # noqa: E402
from medssl_bench.harness.provenance import code_version, package_versions  # noqa: E402
from medssl_bench.methods import get_method  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LIGHTLY_VIEWS = ("simclr", "moco", "byol", "barlowtwins", "vicregl", "swav", "dino", "lvmmed")
SETTINGS = ((64, 96), (224, 512))  # (view size, image side): the quick profile's and the benchmark's


def textured(side: int) -> Image.Image:
    yy, xx = np.mgrid[0:side, 0:side]
    waves = np.stack([128 + 100 * np.sin(xx / 9) * np.cos(yy / 13), 128 + 90 * np.cos(xx / 7 + yy / 11),
                      (xx * 0.5 + yy * 0.3) % 256], -1)
    noise = np.random.default_rng(0).normal(0, 6, waves.shape)
    return Image.fromarray(np.clip(waves + noise, 0, 255).astype(np.uint8))


def mean_ms(fn, n: int) -> float:
    start = time.perf_counter()
    for k in range(n):
        fn(k)
    return (time.perf_counter() - start) / n * 1e3


def views_ms(method: str, size: int, side: int, rounds: int, samples: int) -> dict:
    cls = get_method(method)
    transform, n_images = build_transform(cls, resolve_config(cls, "quick", {"image_size": size}, {}))
    uint8 = data.ViewsDataset([textured(side)], transform, seed=0, loader=lambda e: e, n_image_views=n_images)
    as_float = data.ViewsDataset([textured(side)], transform, seed=0, loader=lambda e: e, n_image_views=n_images)
    as_float.transform = transform  # the float path: lightly's ToTensor, then to_uint8
    paths = {"float": as_float, "uint8": uint8}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(rounds):
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            mean_ms(lambda k: paths[name][(k, 0)], 5)  # warm
            times[name].append(mean_ms(lambda k: paths[name][(k, 0)], samples))
    ms = {name: statistics.median(t) for name, t in times.items()}
    return {"float_ms": round(ms["float"], 3), "uint8_ms": round(ms["uint8"], 3),
            "saved_ms": round(ms["float"] - ms["uint8"], 3), "saved_share": round(1 - ms["uint8"] / ms["float"], 3)}


def seeding_ms(rounds: int, n: int = 3000) -> dict:
    def restored(k):
        with data.seeded_rngs(data.derived_seed(0, 0, k)):  # the main process: seeded, then restored
            pass

    def worker(k):
        data._seed_global_rngs(data.derived_seed(0, 0, k))  # what seeded_rngs does in a loader worker

    times = {"with_restore_ms": [mean_ms(restored, n) for _ in range(rounds)],
             "without_restore_ms": [mean_ms(worker, n) for _ in range(rounds)]}
    return {name: round(statistics.median(t), 4) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--samples", type=int, default=60, help="samples per path per round")
    parser.add_argument("--methods", default=",".join(LIGHTLY_VIEWS))
    parser.add_argument("--out", type=Path, default=RESULTS / "worker_share_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {f"{size}px_from_{side}": {m: views_ms(m, size, side, args.rounds, args.samples)
                                      for m in args.methods.split(",")} for size, side in SETTINGS}
    for setting, row in rows.items():
        for method, r in row.items():
            print(f"{setting:14s} {method:12s} float {r['float_ms']:6.2f} ms  uint8 {r['uint8_ms']:6.2f} ms  "
                  f"saved {r['saved_ms']:.2f} ms ({r['saved_share']:.0%})", flush=True)
    result = {"benchmark": "worker_share", "date": time.strftime("%Y-%m-%d %H:%M"),
              "device": f"cpu ({platform.machine()}, 1 thread)", "settings": vars(args) | {"out": str(args.out)},
              "views_per_sample": rows, "seeding_per_sample": seeding_ms(args.rounds),
              "code": code_version(), "versions": package_versions()}
    print(result["seeding_per_sample"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
