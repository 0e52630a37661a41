"""Seconds per task per checkpoint in the quick profile (issue #5's benchmark).

For every built task: the default synthetic set (what `make demo` writes) is generated in its raw
layout and prepared, then one job per protocol the demo runs (random init, seed 0) is evaluated
through the real `harness.app.evaluate.run_unit`, in this process, one after another. The time of a job
is the wall time the results store records for it (training, validation every epoch, test).

    python benchmarks/eval_quick.py                 # every built task
    python benchmarks/eval_quick.py --task drive --task brats
    python benchmarks/eval_quick.py --task vindr_cxr --task kvasir_det --task bccd \
        --out benchmarks/results/eval_quick_detection_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from medssl_bench.harness.process import configure_process  # noqa: E402

configure_process()

from medssl_bench.downstream.datasets import ADAPTERS  # noqa: E402
from medssl_bench.downstream.registry import TASKS  # noqa: E402
from medssl_bench.harness.checkpoint_index import random_checkpoint  # noqa: E402
from medssl_bench.harness.app.evaluate import run_unit  # noqa: E402
from medssl_bench.harness.provenance import code_version, host_info, package_versions  # noqa: E402
from medssl_bench.harness.store import EvalKey, ResultsStore  # noqa: E402
from medssl_bench.harness.workspace import Workspace  # noqa: E402

DEMO_OPTIONS = {"classification": {"n": 160, "size": 64}, "detection": {"n": 24}}  # the Makefile's demo
# arguments; segmentation uses each adapter's defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", default=[])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_quick_cpu.json"))
    args = parser.parse_args()
    tasks = [TASKS[t] for t in args.task] if args.task else list(TASKS.values())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ws, data_root = Workspace(Path(tmp) / "ws"), Path(tmp) / "data"
        store = ResultsStore.open(None, ws)
        ref = random_checkpoint("resnet18")
        store.upsert_checkpoint(ref.as_record())
        for task in tasks:
            adapter = ADAPTERS[task.dataset]
            if not (data_root / task.dataset).exists():
                start = time.perf_counter()
                options = DEMO_OPTIONS.get(task.family, {})
                raw = adapter.synthesize(Path(tmp) / "raw" / task.dataset, seed=0, **options)
                adapter.prepare(raw, data_root)
                print(f"{task.dataset}: synthesised and prepared in {time.perf_counter() - start:.1f} s", flush=True)
            keys = [EvalKey(ref.id, task.name, p, 1.0, 0) for p in task.default_protocols]
            run_unit(dict(workspace=str(ws.root), db=None, dataset=task.dataset, checkpoint=ref, keys=keys, profile="quick",
                          data_root=str(data_root), force=False, image_size=None, threads=args.threads))
            tests = {r["protocol"]: r for r in store.results(checkpoint_id=ref.id, details=False)
                     if r["task"] == task.name and r["split"] == "test"}
            for e in store.evaluations(checkpoint_id=ref.id):
                if e["task"] == task.name:
                    test = tests.get(e["protocol"], {})
                    rows.append({"task": task.name, "family": task.family, "protocol": e["protocol"],
                                 "status": e["status"], "seconds": round(e["wall_time_s"], 1),
                                 "n_train": (e["protocol_config"] or {}).get("n_train"),
                                 "metric": test.get("metric"), "test_value": test.get("value")})
                    print(f"{task.name:12s} {e['protocol']:9s} {e['status']:6s} {e['wall_time_s']:6.1f} s "
                          f"test {test.get('metric')} {test.get('value')}", flush=True)
        store.close()
    result = {"benchmark": "eval_quick", "profile": "quick", "checkpoint": "random resnet18", "seed": 0,
              "threads": args.threads, "cpus": os.cpu_count(), "rows": rows, "code": code_version(),
              "packages": package_versions(), "host": host_info(),
              "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| task | family | protocol | train images | seconds | test metric (random init) |\n|---|---|---|---|---|---|")
    for r in rows:
        value = "" if r["test_value"] is None else f"{r['metric']} {100 * r['test_value']:.1f}"
        print(f"| {r['task']} | {r['family']} | {r['protocol']} | {r['n_train']} | {r['seconds']} | {value} |")
    print(f"written to: {args.out}")


if __name__ == "__main__":
    main()
