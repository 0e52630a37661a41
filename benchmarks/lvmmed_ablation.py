"""LVM-Med ablation through the harness itself (issue 19, item 6): LVM-Med with its defaults, each
Table-6 switch of the paper, each open choice bench added, SimCLR and random init, all pretrained
at one budget on the synthetic Brain-Tumor corpus (generator version 2) and scored by `bench
eval`'s linear and kNN probes over 3 seeds.

    .venv/bin/python benchmarks/lvmmed_ablation.py [--out /tmp/lvmmed-ablation] [--epochs 12]

Resumable: a row whose run finished is not pretrained again, and `bench eval` skips the jobs its
store already holds, so a stopped table continues where it stopped. Writes
benchmarks/results/lvmmed_ablation_cpu_e{E}.json after every row (pretrained, then probed) and prints the
markdown table.
Budget (CPU): N images at 64 px, batch 64, AdamW `--lr 2e-3`, wd 0.05 for every method (the
recipe SimCLR is known to beat random init with, benchmarks/README.md), E epochs. The lr is scaled as
each method's quick profile scales it: SimCLR linearly (2e-3 x 64/256 = 5e-4), LVM-Med not at all
(2e-3, as its paper's Adam lr); the row "lr 5e-4 (SimCLR's)" trains LVM-Med at SimCLR's lr.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = str(ROOT / ".venv" / "bin" / "bench")
RESULTS = ROOT / "benchmarks" / "results"  # one file per budget: lvmmed_ablation_cpu_e{epochs}.json
TASK = "brain_tumor"
COMMON = ["--set", "optimizer=adamw", "--set", "weight_decay=0.05", "--lr", "0.002"]
LVMMED_VIEWS = ["--set", "crop_scale=(0.4, 1.0)"]  # the same crop floor as SimCLR's row
# (row name, method, --set options): the paper's Table 6 switches, then bench's open choices.
ROWS = [
    ("lvmmed", "lvmmed", []),
    ("simclr", "simclr", ["min_scale=0.4"]),  # early: SimCLR > random says the budget can rank rows
    ("no second-order (LAP)", "lvmmed", ["second_order=false"]),
    ("no message passing (GCN)", "lvmmed", ["message_passing=false"]),
    ("no Gumbel noise (margin)", "lvmmed", ["gumbel_noise=false"]),
    ("no local similarity", "lvmmed", ["local_similarity=false"]),
    ("lambda per instance", "lvmmed", ["lambda_convention=per_instance"]),
    ("edge noise 0", "lvmmed", ["edge_noise_scale=0.0"]),
    ("edge noise 0.2 (1/k)", "lvmmed", ["edge_noise_scale=0.2"]),
    ("sigma on last GCN layer", "lvmmed", ["gcn_last_activation=true"]),
    ("lr 5e-4 (SimCLR's)", "lvmmed", ["lr_scaling=linear"]),  # 2e-3 x 64/256: the lr SimCLR's row trains at
    # VICRegL's multi-crop: 6 local crops of 96/224 of the image size (32 px here: one backbone cell each)
    ("6 local crops (multi-crop)", "lvmmed", ["n_local_views=6", "local_crop_size=32"]),
]
# Rows with another launch: (row name, method, --set options, {"seed": pretraining seed, "nproc": DDP processes}).
# The defaults at a second pretraining seed measure the table's seed noise. torch's SyncBatchNorm does not
# run on CPU, but what it computes is known: BatchNorm statistics (and their gradients) over the global batch,
# which is what one process with the whole batch computes. So the defaults row *is* SyncBN's row, and 4
# gloo processes x 16 images (one 16-image group each, BN over 16) is the per-process BN of DDP without it.
LAUNCH_ROWS = [
    ("LVM-Med defaults (seed 1)", "lvmmed", [], {"seed": 1}),
    ("per-process BN (DDP 4 x 16)", "lvmmed", [], {"nproc": 4}),
]


def bench(*args: str) -> None:
    print("+ bench", " ".join(args), flush=True)
    subprocess.run([BENCH, *args], check=True)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def prepare(out: Path, n: int) -> Path:
    data = out / "data" / TASK
    if not (data / "dataset.json").exists():
        bench("data", "synth", TASK, "--out", str(out / "raw"), "--n", str(n), "--seed", "0", "--size", "64")
        bench("data", "prepare", TASK, "--src", str(out / "raw"), "--out", str(out / "data"))
    corpus = out / "corpus" / f"{TASK}-train"
    if not corpus.exists():  # in-domain: the task's train + val images, never its test images
        corpus.mkdir(parents=True)
        for row in csv.DictReader(open(data / "samples.csv")):
            if row["split"] != "test":
                image = row.get("path") or row["image"]
                os.symlink(data / image, corpus / Path(image).name)
        (corpus / "dataset.json").write_text('{"synthetic": true}\n')
    return corpus


def finished(ws: Path, name: str) -> bool:
    run = ws / "runs" / name / "run.json"
    return run.exists() and json.loads(run.read_text()).get("status") == "done"


def pretrain(ws: Path, corpus: Path, name: str, method: str, sets: list[str], epochs: int,
             launch: dict) -> dict:
    run_dir = ws / "runs" / name
    if not finished(ws, name):
        options = [x for s in sets for x in ("--set", s)]
        views = LVMMED_VIEWS if method == "lvmmed" else []
        resume = ["--resume"] if run_dir.exists() else []
        args = ["pretrain", "--method", method, "--profile", "quick", "--corpus", str(corpus), "--workspace", str(ws),
                "--image-size", "64", "--epochs", str(epochs), "--batch-size", "64",
                "--seed", str(launch.get("seed", 0)), "--name", name, *COMMON, *views, *options, *resume]
        if launch.get("nproc", 1) > 1:  # one thread per process: the processes share the machine's cores
            torchrun = [str(ROOT / ".venv" / "bin" / "torchrun"), "--standalone", "--nproc-per-node",
                        str(launch["nproc"]), "-m", "medssl_bench.harness"]
            print("+ torchrun ... bench", " ".join(args), flush=True)
            subprocess.run([*torchrun, *args, "--num-workers", "0"], check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        else:
            bench(*args)
    record = json.loads((run_dir / "run.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = steps[-20:]
    code = record.get("provenance", {})
    return {"status": record.get("status"), "steps": len(steps), "world_size": record.get("world_size", 1),
            "code": (code.get("git_sha") or "?")[:7] + ("-dirty" if code.get("dirty") else ""),
            "wall_s": round(sum(s.get("seconds", 0.0) for s in steps), 1),
            "final_loss": round(statistics.fmean(s["loss"] for s in last), 4) if last else None,
            "final_match_acc": round(statistics.fmean(s["match_acc"] for s in last), 4)
            if last and "match_acc" in last[0] else None}


def probe_scores(ws: Path, names: dict[str, str]) -> dict[str, dict]:
    """{row: {protocol: {"test": [per seed], "val": [...]}}} from the results store."""
    sys.path.insert(0, str(ROOT))
    from medssl_bench.harness.store import ResultsStore
    from medssl_bench.harness.workspace import Workspace

    store = ResultsStore.open(None, Workspace(ws))
    out: dict[str, dict] = {}
    for row in store.results(task=TASK, details=False):
        by_name = {n: r for r, n in names.items()}
        label = by_name.get(row["provenance"]["checkpoint"].get("name"))
        if label is None:
            continue
        cell = out.setdefault(label, {}).setdefault(row["protocol"], {"test": {}, "val": {}})
        cell[row["split"]][row["seed"]] = row["value"]
    store.close()
    return out


def summary(values: dict) -> dict:
    xs = [values[k] * 100 for k in sorted(values)]
    return {"per_seed": [round(x, 1) for x in xs], "mean": round(statistics.fmean(xs), 1) if xs else None,
            "std": round(statistics.stdev(xs), 1) if len(xs) > 1 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/lvmmed-ablation"))
    parser.add_argument("--n", type=int, default=3000, help="synthetic brain_tumor images (before the split)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--rows", default="", help="comma-separated row names to run (default: all); rows "
                        "finished earlier are reported either way")
    args = parser.parse_args()
    ws, started = args.out / "ws", time.time()
    result_path = RESULTS / f"lvmmed_ablation_cpu_e{args.epochs}.json"
    corpus = prepare(args.out, args.n)
    rows = [(*r, {}) for r in ROWS] + LAUNCH_ROWS
    wanted = set(args.rows.split(",")) if args.rows else {r[0] for r in rows}
    # rows not asked for are still reported when an earlier invocation finished them
    chosen = [r for r in rows if r[0] in wanted or finished(ws, f"abl-{slug(r[0])}")]
    result = {"task": TASK, "device": f"CPU ({os.cpu_count()} cores, {platform.machine()})",
              "code": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
              "budget": {"images": args.n, "image_size": 64, "epochs": args.epochs, "batch_size": 64,
                         "optimizer": "adamw --lr 2e-3 (SimCLR: linear scaling, 5e-4; LVM-Med: none, 2e-3), wd 0.05",
                         "seed": 0},
              "protocols": "bench eval linear + knn, 3 seeds, --image-size 64", "rows": {}}
    names = {"random": "random"}
    result["rows"]["random"] = {"method": "random init", "set": [], "run": None}

    def evaluate(checkpoint: str) -> None:  # after every row, so a stopped table keeps its scores
        bench("eval", "--checkpoint", checkpoint, "--task", TASK, "--protocol", "linear,knn", "--seeds", "3",
              "--image-size", "64", "--workspace", str(ws), "--data-root", str(args.out / "data"))
        scores = probe_scores(ws, names)
        for label, row in result["rows"].items():
            row["scores"] = {p: {split: summary(v) for split, v in cell.items()}
                             for p, cell in scores.get(label, {}).items()}
        result["wall_s"] = round(time.time() - started, 1)
        result_path.write_text(json.dumps(result, indent=2) + "\n")

    evaluate("random")
    for label, method, sets, launch in chosen:
        name = f"abl-{slug(label)}"
        names[label] = name
        result["rows"][label] = {"method": method, "set": sets, "run": name, **launch,
                                 "pretrain": pretrain(ws, corpus, name, method, sets, args.epochs, launch)}
        evaluate(name)
    print("| row | linear test | kNN test | final loss | match acc |\n|---|---|---|---|---|")
    for label, row in result["rows"].items():
        cell = lambda p: "{mean} ± {std}".format(**row["scores"].get(p, {}).get("test", {"mean": "-", "std": "-"}))  # noqa: E731
        pre = row.get("pretrain", {})
        print(f"| {label} | {cell('linear')} | {cell('knn')} | {pre.get('final_loss', '-')} | {pre.get('final_match_acc', '-')} |")
    print(f"written to: {result_path}")


if __name__ == "__main__":
    main()
