"""Where an LVM-Med training step spends its time.

On one batch of pre-made views, times (median over repeats, device synchronised):
- `backbone_only`: the backbone's forward + backward on both views with a trivial loss, plus the
  optimizer step: the floor every method pays;
- `lvmmed`: the full LVM-Med step (projector, kNN graphs, GCN, local/global/edge affinities,
  forward QAP solve, Hamming loss, IMLE backward solve, backprop);
- `simclr`: bench's SimCLR step on the same batch;
- `solve`: time inside the graph-matching solver alone (both solves).
The LVM-Med share = (lvmmed - backbone_only) / lvmmed: everything LVM-Med adds to the backbone
(affinity + solve + IMLE). Goal (issue #3): <= 10% at batch 256, ResNet-18, CPU; issue #19: the same and
LVM-Med step / SimCLR step <= 1.10, also on a GPU at R50, 224 px, bf16, per-GPU batch 200 and 400 (`goals` in
the JSON). A batch that is not a multiple of the group size (16) matches ceil(B/16) groups, the last one
completed from the one before (`groups_per_step`, `images_matched_twice`).

    python benchmarks/lvmmed_step.py                                   # CPU: R18, batch 256, 64 px
    python benchmarks/lvmmed_step.py --backbone resnet50 --image-size 224 --device cuda --amp
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

import torch  # noqa: E402

import medssl_bench.methods.lvmmed as lvmmed_module  # noqa: E402
from medssl_bench.harness.backbones import build_backbone, feature_map  # noqa: E402
from medssl_bench.harness.config import build_transform, method_kwargs, resolve_config  # noqa: E402
from medssl_bench.harness.method_api import StepInfo  # noqa: E402
from medssl_bench.harness.provenance import code_version, package_versions  # noqa: E402
from medssl_bench.methods import get_method  # noqa: E402
from medssl_bench.methods.blocks.matching_groups import layout  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def premade(method_cls, cfg, n, device):
    from PIL import Image

    from pretrain_step import made_in_parallel  # this folder is on sys.path (the script's own)

    transform, _ = build_transform(method_cls, cfg)
    side = int(cfg["image_size"] * 1.25)
    samples = made_in_parallel(lambda _: transform(Image.fromarray((torch.rand(side, side, 3) * 255).byte().numpy())), n)
    return [torch.stack([s[k] for s in samples]).to(device) for k in range(len(samples[0]))]


def time_steps(step_fn, repeats, warmup, device):
    times = []
    for index in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        step_fn(index)
        sync(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--profile", default="paper", help="LVM-Med hyperparameters (solver effort, lambda, ...)")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()
    device = args.device
    torch.backends.cudnn.benchmark = device == "cuda"
    overrides = dict(backbone=args.backbone, batch_size=args.batch_size, image_size=args.image_size)

    def build(name, profile):
        cls = get_method(name)
        cfg = resolve_config(cls, profile, overrides, {})
        torch.manual_seed(0)
        backbone, width = build_backbone(args.backbone)
        model = cls(backbone, width, **method_kwargs(cls, cfg)).to(device)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        return cls, cfg, model, optimizer

    def runner(model, optimizer, views, loss_fn):
        def step(index):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=args.amp):
                loss = loss_fn(model, views, index)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            loss.item()
        return step

    lvm_cls, lvm_cfg, lvm, lvm_opt = build("lvmmed", args.profile)
    views = premade(lvm_cls, lvm_cfg, args.batch_size, device)
    solve_seconds = [0.0]
    real_solve = lvmmed_module.solve_qap

    def timed_solve(*a, **k):
        sync(device)
        start = time.perf_counter()
        out = real_solve(*a, **k)
        sync(device)
        solve_seconds[0] += time.perf_counter() - start
        return out

    lvmmed_module.solve_qap = timed_solve
    lvm_step = lambda m, v, i: m.training_loss(v, StepInfo(step=i, max_steps=100))["loss"]  # noqa: E731
    t_lvmmed = time_steps(runner(lvm, lvm_opt, views, lvm_step), args.repeats, args.warmup, device)
    solve_per_step = solve_seconds[0] / (args.repeats + args.warmup)
    lvmmed_module.solve_qap = real_solve

    floor = lambda m, v, i: feature_map(m.backbone, torch.cat(v[:2])).mean()  # noqa: E731
    t_backbone = time_steps(runner(lvm, lvm_opt, views, floor), args.repeats, args.warmup, device)

    sim_cls, sim_cfg, sim, sim_opt = build("simclr", "quick")
    sim_views = premade(sim_cls, sim_cfg, args.batch_size, device)
    sim_step = lambda m, v, i: m.training_loss(v, StepInfo(step=i))["loss"]  # noqa: E731
    t_simclr = time_steps(runner(sim, sim_opt, sim_views, sim_step), args.repeats, args.warmup, device)

    groups, matched_twice = layout(args.batch_size, lvm_cfg["graph_size"])
    result = {
        "benchmark": "lvmmed_step",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "settings": vars(args),
        "solver": lvm_cfg and {"restarts": lvm_cfg["solver_restarts"], "iters": lvm_cfg["solver_iters"]},
        "groups_per_step": groups,
        "images_matched_twice": matched_twice,
        "seconds": {"lvmmed_step": t_lvmmed, "backbone_only_step": t_backbone, "simclr_step": t_simclr,
                    "solver_per_step": solve_per_step},
        "lvmmed_overhead_share": (t_lvmmed - t_backbone) / t_lvmmed,
        "solver_share": solve_per_step / t_lvmmed,
        "ratio_lvmmed_over_simclr": t_lvmmed / t_simclr,
        "goals": {"lvmmed_over_simclr_le_1.10": t_lvmmed / t_simclr <= 1.10,
                  "lvmmed_overhead_share_le_0.10": (t_lvmmed - t_backbone) / t_lvmmed <= 0.10},
        "code": code_version(),
        "versions": package_versions(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"{device}_{args.backbone}_{args.image_size}"
    out = RESULTS / f"lvmmed_step_{tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "seconds", "lvmmed_overhead_share", "solver_share",
                                             "ratio_lvmmed_over_simclr", "groups_per_step", "goals")}, indent=2))
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
