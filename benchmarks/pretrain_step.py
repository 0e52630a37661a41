"""Step time of `bench`'s SimCLR against a bare loop written with lightly's documented recipe.

Both loops train the same backbone at the same batch and image size on the same views, made
in advance and held in CPU memory (so data loading is out of the comparison; both copy each
batch to the device). Measured in one process, interleaved (bare, harness, bare, harness...),
so machine noise hits both; the figure is the ratio of median per-step times.

Also: images/s of every method's training step at the same settings.

    python benchmarks/pretrain_step.py                       # CPU, quick settings
    python benchmarks/pretrain_step.py --device cuda --backbone resnet50 --image-size 224 \
        --batch-size 256 --amp --steps 30                     # GPU, R50 at 224
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from medssl_bench.harness.process import configure_process

configure_process()  # before torch loads its OpenMP runtime (thread wait policy), as `bench` does

import torch  # noqa: E402
from torch import nn  # noqa: E402

from medssl_bench.harness.backbones import build_backbone  # noqa: E402
from medssl_bench.harness.config import build_transform, method_kwargs, resolve_config  # noqa: E402
from medssl_bench.harness.data import IMAGE_MEAN, IMAGE_STD, default_num_workers, ship_views  # noqa: E402
from medssl_bench.harness.engine import MethodHook, PretrainModel, RunRecordHook, build_runner  # noqa: E402
from medssl_bench.harness.provenance import code_version, package_versions  # noqa: E402
from medssl_bench.methods import METHOD_NAMES, get_method  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class PremadeViews(torch.utils.data.Dataset):
    """`length` samples cycling over views made once; the sampler's (epoch, index) keys are accepted."""

    def __init__(self, views_per_sample, length: int):
        self.views = views_per_sample
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        return {"inputs": self.views[index % len(self.views)]}


class _Made(torch.utils.data.Dataset):
    def __init__(self, make_one, n: int, seed: int):
        self.make_one, self.n, self.seed = make_one, n, seed

    def __len__(self):
        return self.n

    def __getitem__(self, k):
        import random

        import numpy as np

        torch.manual_seed(self.seed * 1_000_003 + k)
        random.seed(self.seed * 1_000_003 + k)
        np.random.seed([self.seed, k])
        return [t.numpy() for t in self.make_one(k)]  # numpy: through the pipe, no shared-memory handle per tensor


def made_in_parallel(make_one, n: int, seed: int = 0) -> list[list[torch.Tensor]]:
    """[make_one(k) for k in range(n)], sample k seeded by (seed, k), made on every core of the host (a DataLoader's
    forked workers, in order). Making the views is set-up, not what the benchmarks time: at 224 px a sample takes
    20-100 ms on one core, minutes for the thousands a GPU run makes."""
    from medssl_bench.harness.provenance import available_cpus

    workers = min(16, available_cpus()) if n >= 32 else 0
    loader = torch.utils.data.DataLoader(_Made(make_one, n, seed), batch_size=None, num_workers=workers,
                                         collate_fn=lambda sample: sample,
                                         multiprocessing_context="fork" if workers else None)
    return [[torch.from_numpy(a) for a in sample] for sample in loader]


def make_views(method_cls, cfg, n: int, seed: int = 0):
    """n samples of the method's own views as the harness ships them (uint8 images, float extras)."""
    from PIL import Image

    transform, n_images = build_transform(method_cls, cfg)
    side = int(cfg["image_size"] * 1.25)

    def one(_):
        return ship_views(transform(Image.fromarray((torch.rand(side, side, 3) * 255).byte().numpy())), n_images)

    return made_in_parallel(one, n, seed)


def thread_environment() -> dict[str, str]:
    """The environment variables that set how the step's threads run and wait (OpenMP, MKL): part of a timing's
    provenance (OMP_WAIT_POLICY moves a 2-core step by a few percent, benchmarks/README.md)."""
    import os

    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))}


def normalised(view_u8: torch.Tensor) -> torch.Tensor:
    """What lightly's recipe feeds its loop: float views normalised on the CPU."""
    mean, std = torch.tensor(IMAGE_MEAN).view(3, 1, 1), torch.tensor(IMAGE_STD).view(3, 1, 1)
    return (view_u8.float() / 255 - mean) / std


class StepClock:
    """Per-step wall times; synchronises the device so each step is fully counted."""

    def __init__(self, device: str):
        self.device = device
        self.times: list[float] = []
        self._last = None

    def tick(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def bare_lightly_simclr(cfg, batches, device: str, amp: bool, concat: bool) -> list[float]:
    """lightly's documented SimCLR loop (docs 'Examples > SimCLR'), nothing else."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    torch.manual_seed(0)
    backbone, width = build_backbone(cfg["backbone"])
    model = nn.Sequential(backbone, SimCLRProjectionHead(width, cfg["proj_hidden_dim"], cfg["proj_out_dim"])).to(device)
    criterion = NTXentLoss(temperature=cfg["temperature"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
    clock = StepClock(device)
    clock.tick()
    for x0, x1 in batches:
        x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            if concat:
                z0, z1 = model(torch.cat([x0, x1])).chunk(2)
            else:
                z0, z1 = model(x0), model(x1)
            loss = criterion(z0, z1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss.item()  # the harness logs the loss every step; so does this loop
        clock.tick()
    return clock.times


def clock_hook(clock: StepClock):
    """An mmengine hook ticking `clock` when training starts and after every iteration."""
    from mmengine.hooks import Hook

    class ClockHook(Hook):
        priority = "LOWEST"

        def before_train(self, runner):
            clock.tick()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            clock.tick()

    return ClockHook()


def harness_steps(method: str, cfg, samples, device: str, n_steps: int, dataset=None, device_plan=None,
                  hooks=()) -> list[float]:
    """The same steps through bench: PretrainModel + mmengine Runner + bench's hooks, fed `samples` (views made in
    advance, cycled for n_steps batches) or `dataset` (an epoch of it; `device_plan`: its views made on the device),
    with `hooks` after the step clock's."""
    from mmengine.runner import set_random_seed

    method_cls = get_method(method)
    clock = StepClock(device)
    set_random_seed(0)
    backbone, width = build_backbone(cfg["backbone"])
    with tempfile.TemporaryDirectory() as tmp:
        kwargs, sampler = method_kwargs(method_cls, cfg), None
        if method_cls.uses_labels:  # Ark: real labelled phantom sets through its cyclic sampler (loading included)
            from medssl_bench.harness.app.labelled import load_labelled

            data = load_labelled(["phantom_ct"], Path(tmp), cfg["image_size"], cfg["batch_size"], method)
            cfg = {**cfg, "epochs": -(-n_steps // sum(data.layout.pass_steps))}
            kwargs["labels"], sampler = data.layout, data.sampler(cfg["batch_size"], 0)
            transform, n_images = build_transform(method_cls, cfg)
            dataset = data.views(transform, 0, n_images)
        elif dataset is None:
            dataset = PremadeViews(samples, n_steps * cfg["batch_size"])
        model = PretrainModel(method_cls(backbone, width, **kwargs), device_plan)
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        runner = build_runner(model, dataset, cfg, run_dir, resume=False, num_workers=default_num_workers(),
                              hooks=[MethodHook(), RunRecordHook(run_dir, {}), clock_hook(clock), *hooks],
                              sampler=sampler)
        runner.train()
        del runner
    gc.collect()  # the runner's cycles: its loader workers end now, not in a later round's forked children
    return clock.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each loop")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each round")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast in both loops (GPU)")
    parser.add_argument("--methods", default=",".join(METHOD_NAMES))
    parser.add_argument("--distinct-batches", type=int, default=3, help="batches of views made; steps cycle over them")
    parser.add_argument("--tag", default=None, help="results file suffix (default: device)")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.device == "cuda"

    overrides = dict(backbone=args.backbone, image_size=args.image_size, batch_size=args.batch_size, amp=args.amp,
                     epochs=1)
    n_steps = args.warmup + args.steps
    samples = {}
    for method in args.methods.split(","):
        cfg = resolve_config(get_method(method), "quick", overrides, {})
        premade = None if get_method(method).uses_labels else \
            make_views(get_method(method), cfg, args.batch_size * args.distinct_batches)
        samples[method] = (cfg, premade)

    simclr_cfg, simclr_samples = samples["simclr"]
    distinct = [tuple(torch.stack([normalised(s[v]) for s in simclr_samples[i:i + args.batch_size]]) for v in range(2))
                for i in range(0, len(simclr_samples), args.batch_size)]
    batches = [distinct[i % len(distinct)] for i in range(n_steps)]
    if args.device == "cuda":
        batches = [tuple(x.pin_memory() for x in b) for b in batches]
    timings: dict[str, list[float]] = {"bare_lightly": [], "bare_lightly_concat": [], "bench_simclr": []}
    for _ in range(args.rounds):
        timings["bare_lightly"] += bare_lightly_simclr(simclr_cfg, batches, args.device, args.amp, False)[args.warmup:]
        timings["bare_lightly_concat"] += bare_lightly_simclr(simclr_cfg, batches, args.device, args.amp, True)[args.warmup:]
        timings["bench_simclr"] += harness_steps("simclr", simclr_cfg, simclr_samples, args.device, n_steps)[args.warmup:]
    per_method = {}
    for method, (cfg, method_samples) in samples.items():
        times = (timings["bench_simclr"] if method == "simclr"
                 else harness_steps(method, cfg, method_samples, args.device, n_steps)[args.warmup:])
        per_method[method] = {"median_step_s": statistics.median(times), "images_per_s": args.batch_size / statistics.median(times)}

    median = {k: statistics.median(v) for k, v in timings.items()}
    result = {
        "benchmark": "pretrain_step",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "settings": vars(args),
        "median_step_s": median,
        "ratio_bench_over_lightly_recipe": median["bench_simclr"] / median["bare_lightly"],
        "ratio_bench_over_bare_same_computation": median["bench_simclr"] / median["bare_lightly_concat"],
        "methods": per_method,
        "n_timed_steps_per_loop": len(timings["bench_simclr"]),
        "thread_environment": thread_environment(),
        "code": code_version(),
        "versions": package_versions(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = args.tag or ("gpu" if args.device == "cuda" else "cpu")
    out = RESULTS / f"pretrain_step_{tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "median_step_s", "ratio_bench_over_lightly_recipe",
                                             "ratio_bench_over_bare_same_computation", "methods")}, indent=2))
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
