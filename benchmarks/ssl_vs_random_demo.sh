#!/usr/bin/env bash
# Does the demo's SimCLR checkpoint beat random init on a task? The `make demo` path exactly: the
# phantom corpus (256 images, 96 px), SimCLR quick for 2 epochs, the task's default synthetic set,
# its quick protocol over 3 seeds. Writes benchmarks/results/ssl_vs_random_demo_<tasks>.json.
#   benchmarks/ssl_vs_random_demo.sh [OUT] TASK...      e.g. benchmarks/ssl_vs_random_demo.sh /tmp/sv bccd kvasir_det
set -euo pipefail
OUT=${1:-/tmp/ssl-vs-random-demo}; shift
ROOT="$(cd "$(dirname "$0")/.." && pwd)"; BENCH="$ROOT/.venv/bin/bench"; WS="$OUT/ws"
rm -rf "$OUT" && mkdir -p "$OUT"
"$BENCH" corpus synth --out "$OUT/corpus" --n 256 --seed 0 --size 96
"$BENCH" corpus build --root "$OUT/corpus" --workspace "$WS"
"$BENCH" pretrain --method simclr --profile quick --corpus "$OUT/corpus" --workspace "$WS" --epochs 2 --name simclr-demo
TASK_ARGS=()
for task in "$@"; do
  "$BENCH" data synth "$task" --out "$OUT/raw/$task" --seed 0
  "$BENCH" data prepare "$task" --src "$OUT/raw/$task" --workspace "$WS"
  TASK_ARGS+=(--task "$task")
done
"$BENCH" eval --checkpoint simclr-demo,random "${TASK_ARGS[@]}" --seeds 3 --workspace "$WS" --jobs 2
"$ROOT/.venv/bin/python" - "$WS" "$ROOT/benchmarks/results/ssl_vs_random_demo_$(IFS=_; echo "$*").json" <<'PY'
import json, sys, time
from pathlib import Path
from medssl_bench.harness.provenance import code_version, host_info
from medssl_bench.harness.store import ResultsStore
from medssl_bench.harness.workspace import Workspace
store = ResultsStore.open(None, Workspace(Path(sys.argv[1])))
names = {c["id"]: c["name"] for c in store.checkpoints()}
rows = [{"checkpoint": names[r["checkpoint_id"]], "task": r["task"], "seed": r["seed"], "split": r["split"],
         "metric": r["metric"], "value": r["value"]} for r in store.results() if r["split"] == "test"]
Path(sys.argv[2]).write_text(json.dumps({"benchmark": "ssl_vs_random_demo", "profile": "quick", "rows": rows,
                                         "code": code_version(), "host": host_info(),
                                         "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
print(f"written to: {sys.argv[2]}")
PY
