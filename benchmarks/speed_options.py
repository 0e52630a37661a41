"""bench's training step with `--channels-last`, `--compile` and both, against the default (issue #21).

The step of pretrain_step.py (PretrainModel + mmengine Runner + bench's hooks, views made in advance, so loading is
out of it) under each setting, in interleaved rounds; the figure is each setting's median step over the default's,
measured in the same run. A compiled round's first steps compile (inductor's on-disk cache makes later rounds'
compiles shorter): `first_step_s` is reported apart, and `--warmup` steps are left out of the medians.

    .venv/bin/python benchmarks/speed_options.py                           # CPU, quick settings, SimCLR
    python benchmarks/speed_options.py --device cuda --backbone resnet50 --image-size 224 --batch-size 256 \
        --amp --methods simclr,dino --settings default,channels_last,channels_last+compile \
        --tag h100_r50_224                                                 # the issue's GPU row

Writes benchmarks/results/speed_options_<tag>.json (tag: cpu by default) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from medssl_bench.harness.process import configure_process

configure_process()  # before torch loads its OpenMP runtime (thread wait policy), as `bench` does

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_step import harness_steps, make_views, thread_environment  # noqa: E402

from medssl_bench.harness.config import resolve_config  # noqa: E402
from medssl_bench.harness.provenance import code_version, package_versions  # noqa: E402
from medssl_bench.methods import get_method  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"default": {}, "channels_last": {"channels_last": True}, "compile": {"compile": True},
            "channels_last+compile": {"channels_last": True, "compile": True}}


def measure(method: str, overrides: dict, args) -> dict:
    base = resolve_config(get_method(method), "quick", overrides, {})
    samples = make_views(get_method(method), base, base["batch_size"] * args.distinct_batches)
    n_steps = args.warmup + args.steps
    names = args.settings.split(",")
    times: dict[str, list[float]] = {name: [] for name in names}
    first: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            steps = harness_steps(method, {**base, **SETTINGS[name]}, samples, args.device, n_steps)
            first[name].append(round(steps[0], 3))
            times[name] += steps[args.warmup:]
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"config": {k: base[k] for k in ("backbone", "image_size", "batch_size", "amp")},
            "median_step_s": median, "images_per_s": {n: base["batch_size"] / m for n, m in median.items()},
            "ratio_over_default": {n: median["default"] / m for n, m in median.items()},
            "first_step_s": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="simclr")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default=None, help="default: the quick profile's")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per round (compiling: DINO's local "
                                                              "crops compile a second graph in step 1)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--distinct-batches", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="the first is the reference")
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()
    unknown = set(args.settings.split(",")) - set(SETTINGS)
    if unknown or not args.settings.startswith("default"):
        parser.error(f"--settings: 'default' first, then any of {', '.join(SETTINGS)}; got {args.settings}")
    torch.backends.cudnn.benchmark = args.device == "cuda"
    overrides = {k: v for k, v in dict(backbone=args.backbone, image_size=args.image_size,
                                       batch_size=args.batch_size, amp=args.amp or None, epochs=1).items()
                 if v is not None}
    rows = {method: measure(method, overrides, args) for method in args.methods.split(",")}
    result = {
        "benchmark": "speed_options", "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else
        f"cpu ({platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)",
        "load_average": os.getloadavg(), "settings": vars(args), "methods": rows,
        "thread_environment": thread_environment(),
        "code": code_version(), "versions": package_versions(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"speed_options_{args.tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'method':8s} {'setting':22s} {'step s':>7s} {'img/s':>7s} {'/default':>8s}  first steps s")
    for method, row in rows.items():
        for name in row["median_step_s"]:
            print(f"{method:8s} {name:22s} {row['median_step_s'][name]:7.3f} {row['images_per_s'][name]:7.1f} "
                  f"{row['ratio_over_default'][name]:8.2f}  {row['first_step_s'][name]}")
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
