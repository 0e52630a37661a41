"""Linear-probe time per checkpoint, with and without the frozen-feature cache (issue #4).

One checkpoint evaluated with the linear protocol over S seeds x F label fractions. Without
the cache every job runs the frozen encoder over the whole dataset again; with it the features
are computed once (per checkpoint and data) and each job only trains the probe. Both paths run
the real `downstream.classification.run_job` on the same synthetic Brain-Tumor data, in one
process, interleaved.

    python benchmarks/linear_probe.py                          # quick: R18, 64 px, CPU
    python benchmarks/linear_probe.py --backbone resnet50 --image-size 224 --n 400 --tag r50_224
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from medssl_bench.harness.process import configure_process  # noqa: E402

configure_process()

import torch  # noqa: E402

from medssl_bench.downstream.classification import FeatureCache, run_job  # noqa: E402
from medssl_bench.downstream.datasets import brain_tumor  # noqa: E402
from medssl_bench.downstream.datasets.canonical import load_classification_dataset  # noqa: E402
from medssl_bench.downstream.registry import get_task  # noqa: E402
from medssl_bench.harness.backbones import build_backbone  # noqa: E402
from medssl_bench.harness.checkpoint import save_backbone  # noqa: E402
from medssl_bench.harness.checkpoint_index import resolve_checkpoints  # noqa: E402
from medssl_bench.harness.provenance import code_version, host_info, package_versions  # noqa: E402
from medssl_bench.harness.workspace import Workspace  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=240, help="synthetic images in the dataset")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fractions", default="0.1,1.0")
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task = get_task("brain_tumor")
    protocol = replace(task.protocol("linear", "quick"), image_size=args.image_size, backbone=args.backbone)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = brain_tumor.synthesize(tmp / "raw", n=args.n, seed=0, size=max(96, args.image_size))
        data = load_classification_dataset(brain_tumor.prepare(raw, tmp / "data"))
        ws = Workspace(tmp / "ws")
        backbone, _ = build_backbone(args.backbone)
        weights = save_backbone(backbone, ws.root / "checkpoints" / "bench-probe" / "backbone.safetensors",
                                {"method": "benchmark", "backbone": args.backbone})
        ref = resolve_checkpoints(str(weights), ws)[0]
        jobs = [(f, s) for f in fractions for s in range(args.seeds)]

        def run(cached: bool) -> float:
            cache = FeatureCache(None)  # in memory only: the disk cache would hide the cost between rounds
            start = time.perf_counter()
            for fraction, seed in jobs:
                if not cached:
                    cache = FeatureCache(None)
                run_job(task, protocol, data, ref, label_fraction=fraction, seed=seed, cache=cache, device=device,
                        work_root=tmp / "work")
            return time.perf_counter() - start

        run(True)  # warm-up: imports, allocator, first decode
        timings = {"with_cache": [], "without_cache": []}
        for _ in range(2):
            timings["without_cache"].append(run(False))
            timings["with_cache"].append(run(True))

    best = {k: min(v) for k, v in timings.items()}
    result = {
        "benchmark": "linear_probe", "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "backbone": args.backbone, "image_size": args.image_size,
        "images": len(data.samples), "jobs_per_checkpoint": len(jobs), "seeds": args.seeds, "fractions": fractions,
        "seconds_per_checkpoint": best, "speedup": best["without_cache"] / best["with_cache"], "all_rounds": timings,
        "code": code_version(), "packages": package_versions(), "host": host_info(),
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }
    out = Path(__file__).resolve().parent / "results" / f"linear_probe_{args.tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "backbone", "image_size", "images", "jobs_per_checkpoint",
                                              "seconds_per_checkpoint", "speedup")}, indent=2))
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
