"""`bench pretrain` with its real loader against the same steps on views made in advance (issue #21).

The same harness loop (PretrainModel + mmengine Runner + bench's hooks, default loader workers) is fed,
in interleaved rounds, from:
- `premade`: views made once and held in memory (no decoding, no augmentation: the step alone);
- `files`: the corpus's source files, views made in the loader workers (the path without a pack);
- `packed`: the packed copy (`bench corpus pack`), views made in the loader workers;
- `packed_device`: the packed copy, views made on the device (`--augment device`; here the CPU).
The figure is images/s of each path over images/s of `premade` (goal: >= 0.95 at the quick settings): over the
medians of all rounds (`ratio_over_premade`), and per round against that round's premade step
(`ratio_over_premade_by_round`: median, min, max), which a shared machine's drift in speed between rounds
leaves out.

    .venv/bin/python benchmarks/loader_overhead.py [--method simclr] [--images 512] [--rounds 3]
    python benchmarks/loader_overhead.py --device cuda --backbone resnet50 --image-size 224 --batch-size 256 \
        --amp --image-side 320 --images 4096 --methods simclr,dino --tag h100_r50_224     # the issue's GPU row

Writes benchmarks/results/loader_overhead_<tag>.json (tag: cpu by default) and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from medssl_bench.harness.process import configure_process

configure_process()  # before torch loads its OpenMP runtime (thread wait policy), as `bench` does

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_step import PremadeViews, harness_steps, make_views, thread_environment  # noqa: E402

from medssl_bench.harness.config import build_transform, resolve_config  # noqa: E402
from medssl_bench.harness.corpus import build_corpus  # noqa: E402
from medssl_bench.harness.corpus_pack import pack_corpus  # noqa: E402
from medssl_bench.harness.data import ViewsDataset, default_num_workers  # noqa: E402
from medssl_bench.harness.device_views import DeviceViewsTransform, check_device_views  # noqa: E402
from medssl_bench.harness.packed_reader import PackedImages  # noqa: E402
from medssl_bench.harness.provenance import code_version, package_versions  # noqa: E402
from medssl_bench.harness.workspace import Workspace  # noqa: E402
from medssl_bench.methods import get_method  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc: utime and stime, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_meter(warmup: int):
    """An mmengine hook measuring the CPU seconds the timed steps (those after `warmup`) took: the training process's
    (step threads and loop) and its loader workers' (live processes, read from /proc), and the wall time."""
    import resource

    from mmengine.hooks import Hook

    class CpuMeter(Hook):
        priority = "LOWEST"
        used: dict = {}

        def _now(self, runner) -> tuple[float, float, float]:
            own = resource.getrusage(resource.RUSAGE_SELF)
            workers = getattr(getattr(runner.train_dataloader, "_iterator", None), "_workers", [])
            return time.perf_counter(), own.ru_utime + own.ru_stime, sum(proc_cpu_seconds(w.pid) for w in workers)

        def before_train(self, runner):
            if warmup == 0:
                self.start = self._now(runner)

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if batch_idx + 1 == warmup:
                self.start = self._now(runner)

        def after_train_epoch(self, runner):  # persistent workers are still alive here
            end = self._now(runner)
            self.used = dict(zip(("wall_s", "training_process_cpu_s", "loader_workers_cpu_s"),
                                 (e - s for e, s in zip(end, self.start))))

    return CpuMeter()


def timed_steps(method: str, cfg: dict, dataset, device: str, device_plan=None,
                warmup: int = 0) -> tuple[list[float], dict]:
    """Per-step seconds of one epoch of `dataset` through bench's loop, and cpu_meter's figures past `warmup`."""
    meter = cpu_meter(warmup)
    steps = harness_steps(method, {**cfg, "epochs": 1}, None, device, len(dataset) // cfg["batch_size"],
                          dataset=dataset, device_plan=device_plan, hooks=[meter])
    return steps, meter.used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="simclr")
    parser.add_argument("--images", type=int, default=512, help="phantom images in the corpus")
    parser.add_argument("--image-side", type=int, default=96, help="side of the phantom images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default=None, help="default: the quick profile's")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sources", default="premade,files,packed,packed_device", help="premade first: the reference")
    args = parser.parse_args()
    if not set(args.sources.split(",")) <= {"premade", "files", "packed", "packed_device"} or \
            not args.sources.startswith("premade"):
        parser.error(f"--sources: premade first, then any of files, packed, packed_device; got {args.sources}")
    overrides = {k: v for k, v in dict(backbone=args.backbone, image_size=args.image_size,
                                       batch_size=args.batch_size, amp=args.amp or None).items() if v is not None}
    n_steps = args.warmup + args.steps
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        synthesize_in_parallel(Path(tmp) / "src", args.images, args.image_side)
        corpus = build_corpus([Path(tmp) / "src"], Workspace(Path(tmp) / "ws"))
        packed = PackedImages(pack_corpus(corpus, max_side=max(128, args.image_side)))  # its default workers
        for method in args.methods.split(","):
            rows[method] = measure(method, overrides, corpus.entries, packed, n_steps, args)
    result = {
        "benchmark": "loader_overhead", "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else
        f"cpu ({platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)",
        "load_average": os.getloadavg(), "loader_workers": default_num_workers(), "settings": vars(args),
        "thread_environment": thread_environment(),
        "methods": rows, "code": code_version(), "versions": package_versions(),
    }
    out = RESULTS / f"loader_overhead_{args.tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "load_average", "methods")}, indent=2))
    print(f"results written to {out}")


def synthesize_in_parallel(out: Path, n: int, size: int) -> None:
    """`synthesize_corpus(out, n, seed=0, size)`, one process per family: the same files (each family's images
    are seeded by (seed, family, index)), in a fraction of the time (set-up, not what is timed)."""
    import concurrent.futures
    import multiprocessing

    from medssl_bench.downstream.phantoms import synthesize_corpus
    from medssl_bench.downstream.phantoms.corpus import FAMILIES, plan
    from medssl_bench.harness.provenance import available_cpus

    counts = plan(n, FAMILIES)
    with concurrent.futures.ProcessPoolExecutor(min(len(counts), available_cpus()),
                                                mp_context=multiprocessing.get_context("fork")) as pool:
        for done in [pool.submit(synthesize_corpus, out, count, 0, size, [family]) for family, count in counts.items()]:
            done.result()


def measure(method: str, overrides: dict, all_entries: list, packed, n_steps: int, args) -> dict:
    method_cls = get_method(method)
    cfg = resolve_config(method_cls, "quick", overrides, {})
    device_cfg = resolve_config(method_cls, "quick", overrides, {"augment": "device"})
    entries = all_entries[: n_steps * cfg["batch_size"]]  # one epoch = the timed round
    if len(entries) < n_steps * cfg["batch_size"]:
        raise SystemExit(f"--images {len(all_entries)} < {n_steps} steps x batch {cfg['batch_size']}")
    transform, n_images = build_transform(method_cls, cfg)
    plan = check_device_views(method_cls, device_cfg)
    premade = make_views(method_cls, cfg, cfg["batch_size"] * 3)  # made once, for every round
    sources = {
        "premade": lambda: PremadeViews(premade, n_steps * cfg["batch_size"]),
        "files": lambda: ViewsDataset(entries, transform, seed=0, n_image_views=n_images),
        "packed": lambda: ViewsDataset(range(len(entries)), transform, seed=0, loader=packed.rgb,
                                       n_image_views=n_images),
        "packed_device": lambda: ViewsDataset(range(len(entries)), DeviceViewsTransform(plan), seed=0,
                                              loader=packed.rgb, n_image_views=0),
    }
    sources = {name: sources[name] for name in args.sources.split(",")}
    times: dict[str, list[float]] = {name: [] for name in sources}
    used: dict[str, list[dict]] = {name: [] for name in sources}
    rounds: dict[str, list[float]] = {name: [] for name in sources}  # each round's median step
    for _ in range(args.rounds):
        for name, make in sources.items():
            use_cfg, use_plan = (device_cfg, plan) if name == "packed_device" else (cfg, None)
            steps, cpu = timed_steps(method, use_cfg, make(), args.device, use_plan, args.warmup)
            times[name] += steps[args.warmup:]
            rounds[name].append(statistics.median(steps[args.warmup:]))
            used[name].append(cpu)
    median = {name: statistics.median(t) for name, t in times.items()}
    # a source against the premade step of its own round (minutes apart at most): drift of a shared machine's
    # speed between rounds cancels in these, not in the ratio of medians over all rounds
    paired = {name: [p / s for p, s in zip(rounds["premade"], r)] for name, r in rounds.items()}
    total = lambda rs, key: sum(r[key] for r in rs)  # noqa: E731
    cpu = {name: {"cores_busy": round((total(rs, "training_process_cpu_s") + total(rs, "loader_workers_cpu_s"))
                                      / total(rs, "wall_s"), 2),
                  **{f"{key}_per_step": round(total(rs, key) / (len(rs) * args.steps), 4)
                     for key in ("training_process_cpu_s", "loader_workers_cpu_s")}}
           for name, rs in used.items()}
    return {"config": {k: cfg[k] for k in ("backbone", "image_size", "batch_size", "amp")},
            "median_step_s": median, "images_per_s": {n: cfg["batch_size"] / m for n, m in median.items()},
            "ratio_over_premade": {n: median["premade"] / m for n, m in median.items()},
            "median_step_s_per_round": rounds,
            "ratio_over_premade_by_round": {n: {"median": statistics.median(r), "min": min(r), "max": max(r)}
                                            for n, r in paired.items()},
            "cpu_over_timed_steps": cpu}


if __name__ == "__main__":
    main()
