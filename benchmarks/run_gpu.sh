#!/usr/bin/env bash
# The GPU rows of benchmarks/README.md on one GPU (README: "Running the GPU rows"). Run from a plain checkout on a
# CUDA machine whose python3 has torch/torchvision: the rest of what the benchmarks import comes as wheels in .whl/
# (benchmarks/gpu_wheels.sh), bench itself from this checkout.
#
#   PART=1 bash benchmarks/run_gpu.sh   # issue #19's LVM-Med rows (batch 200, 400), batch 256, pretrain_step (~5.2 min)
#   PART=2 bash benchmarks/run_gpu.sh   # issue #21: view_costs, loader_overhead (~4.8 min)
#   PART=3 bash benchmarks/run_gpu.sh   # issue #21: speed_options (channels_last, compile) (~4.2 min)
#   bash benchmarks/run_gpu.sh          # all parts in one run (~14 min estimated: past BUDGET_S, the last rows skip)
#   ONLY="view_costs" bash benchmarks/run_gpu.sh                # named rows only
#   SMOKE=1 TAG=smoke bash benchmarks/run_gpu.sh                # every command and code path on the CPU, tiny sizes
#
# Rows run in order, each even if one before it failed. A row that would not finish within BUDGET_S seconds of the
# start is skipped, and each is stopped at the budget (`timeout`), so the run ends before a 600 s device limit. Each
# results JSON is copied into "$OUT" (when set) as soon as its row ends, with the log (run_gpu.log): 8 files at most.
# Ends with one summary line per row; exit status 0 only if every row passed.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
SMOKE=${SMOKE:-0}
TAG=${TAG:-}  # default: h100 / h200 / gpu from nvidia-smi (smoke on SMOKE=1)
PART=${PART:-all}
BUDGET_S=${BUDGET_S:-540}
RESULTS=benchmarks/results
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore

main() {
  # The wheels (lightly, mmengine, kornia, ...: what the GPU image lacks), then bench: the checkout's folders under
  # the medssl_bench namespace (pyproject's package-dir), ahead of any installed copy.
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "FAIL: installing .whl/*.whl"; return 1; }
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  fi
  rm -rf /tmp/bench_src && mkdir -p /tmp/bench_src/medssl_bench
  for d in harness methods downstream leaderboard; do ln -s "$PWD/$d" "/tmp/bench_src/medssl_bench/$d"; done
  export PYTHONPATH=/tmp/bench_src:${PYTHONPATH:-}

  if [ "$SMOKE" = 1 ]; then
    DEV=(--device cpu)
    echo "SMOKE: the same rows on the CPU at tiny sizes (R18, 64 px, batch 24-40, 1-2 steps)"
  else
    DEV=(--device cuda)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    if [ -z "$TAG" ]; then
      case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
        *H100*) TAG=h100 ;; *H200*) TAG=h200 ;; *) TAG=gpu ;;
      esac
    fi
  fi
  TAG=${TAG:-smoke}
  python3 -c "import sys, os, torch, torchvision, numpy; print('python', sys.version.split()[0], '| torch',
    torch.__version__, '| torchvision', torchvision.__version__, '| numpy', numpy.__version__, '| cuda',
    torch.cuda.is_available(), '| cores', os.cpu_count())" || { echo "FAIL: python3 with torch"; return 1; }
  if [ "$SMOKE" != 1 ]; then
    python3 -c "import torch; assert torch.cuda.is_available()" || { echo "FAIL: torch sees no GPU"; return 1; }
  fi
  python3 -c "import medssl_bench.harness.engine, lightly, mmengine, kornia" \
    || { echo "FAIL: imports (is .whl/ carried? bash benchmarks/gpu_wheels.sh)"; return 1; }
  echo "setup: $((SECONDS - T0)) s (part $PART, tag $TAG, budget $BUDGET_S s)"

  if [ "$SMOKE" = 1 ]; then
    R50=(--backbone resnet18 --image-size 64)
    AMP=(); LVM_AMP=(--amp)  # the harness refuses --amp on a CPU; lvmmed_step's own bf16 autocast runs there
    LVM=(--repeats 1 --warmup 1); B256=32; B200=24; B400=40   # 24, 40: not multiples of 16, as 200 and 400
    STEP=(--batch-size 32 --steps 1 --rounds 1 --warmup 1 --distinct-batches 1)
    VIEWS=(--batch 4 --images 2 --repeats 1)
    LOADER=(--batch-size 32 --image-side 96 --images 64 --steps 1 --rounds 1 --warmup 1)
    OPTS=(--batch-size 32 --steps 1 --rounds 1 --warmup 1 --distinct-batches 1)
  else
    R50=(--backbone resnet50 --image-size 224)
    AMP=(--amp); LVM_AMP=(--amp)
    LVM=(--repeats 5 --warmup 2); B256=256; B200=200; B400=400
    STEP=(--batch-size 256 --steps 10 --rounds 2 --warmup 3 --distinct-batches 2)
    VIEWS=(--batch 256)
    LOADER=(--batch-size 256 --image-side 320 --images 3072 --steps 10 --rounds 2 --warmup 2)
    OPTS=(--batch-size 256 --steps 8 --rounds 1 --warmup 3 --distinct-batches 2)
  fi

  # H100 estimate per row (16 cores; from the README's H100 rows of 2026-11-22 and the CPU rehearsal) as its
  # second argument, seconds: a row is skipped when less than that is left of BUDGET_S.
  if [ "$PART" = all ] || [ "$PART" = 1 ]; then
    # issue #19: LVM-Med step / SimCLR step <= 1.10 and LVM-Med's share (graphs + solve + IMLE) <= 10% at R50,
    # 224 px, bf16, per-GPU batch 200 (13 groups of 16, the last completed from the one before) and 400 (25).
    # ~35 s, ~45 s: start-up + CUDA ~10 s, views ~3-5 s (all cores), 3 x 7 steps of 0.2-0.5 s, cuDNN autotuning
    row lvmmed_b200 35 "lvmmed_step_${TAG}_r50_224_b200.json" -- \
      python3 benchmarks/lvmmed_step.py "${DEV[@]}" "${R50[@]}" "${LVM_AMP[@]}" --batch-size $B200 "${LVM[@]}" \
      --tag "${TAG}_r50_224_b200"
    row lvmmed_b400 45 "lvmmed_step_${TAG}_r50_224_b400.json" -- \
      python3 benchmarks/lvmmed_step.py "${DEV[@]}" "${R50[@]}" "${LVM_AMP[@]}" --batch-size $B400 "${LVM[@]}" \
      --tag "${TAG}_r50_224_b400"
    # issue #3: the batch-256 row of the README's LVM-Med table (0.291 s, 23% on 2026-11-22). ~35 s
    row lvmmed_b256 35 "lvmmed_step_${TAG}_r50_224.json" -- \
      python3 benchmarks/lvmmed_step.py "${DEV[@]}" "${R50[@]}" "${LVM_AMP[@]}" --batch-size $B256 "${LVM[@]}" \
      --tag "${TAG}_r50_224"
    # issues #2, #9: bench's SimCLR step vs the bare lightly loop, and images/s of all 11 methods. ~180 s: views
    # 11 x 512 samples ~15 s (all cores), 2 rounds x 3 loops x 13 steps ~30 s, then ~12 s per other method
    # (Runner + 8 loader workers + 13 steps; 4 methods took ~2 min in all on 2026-11-22)
    row pretrain_step 180 "pretrain_step_${TAG}_r50_224.json" -- \
      python3 benchmarks/pretrain_step.py "${DEV[@]}" "${R50[@]}" "${AMP[@]}" "${STEP[@]}" --tag "${TAG}_r50_224"
  fi
  if [ "$PART" = all ] || [ "$PART" = 2 ]; then
    # issue #21: a loader worker's ms per image, CPU vs device views (one core: 11 methods x 121 samples x ~30 ms
    # ~40 s) and the device side per batch of 256 (~2 s of samples per method + kornia on the GPU). ~70 s
    row view_costs 70 "view_costs_${TAG}.json" -- \
      python3 benchmarks/view_costs.py "${DEV[@]}" "${VIEWS[@]}" --out "$RESULTS/view_costs_${TAG}.json"
    # issue #21: bench's loop fed by its real loader vs premade views, SimCLR and DINO. ~200 s: 3072 phantoms at
    # 320 px + corpus + pack ~30 s (all cores), 2 methods x 2 rounds x 4 sources x (Runner + workers ~4 s + 12 steps,
    # 3-10 s: the CPU-view sources are loader-bound, ~15-30 ms per image over 8 workers)
    row loader_overhead 200 "loader_overhead_${TAG}_r50_224.json" -- \
      python3 benchmarks/loader_overhead.py "${DEV[@]}" "${R50[@]}" "${AMP[@]}" "${LOADER[@]}" --methods simclr,dino \
      --tag "${TAG}_r50_224"
  fi
  if [ "$PART" = all ] || [ "$PART" = 3 ]; then
    # issue #21: the step with --channels-last, and with --compile on top of it, over the default; SimCLR and DINO.
    # ~240 s: views ~10 s (all cores), 2 methods x 3 settings x (Runner ~3 s + 3 + 8 steps of 0.2-0.3 s), and
    # inductor compiling R50's forward and backward (SimCLR one graph; DINO two, its global and local crops),
    # estimated ~40-60 s each on 16 cores
    row speed_options 240 "speed_options_${TAG}_r50_224.json" -- \
      python3 benchmarks/speed_options.py "${DEV[@]}" "${R50[@]}" "${AMP[@]}" "${OPTS[@]}" --methods simclr,dino \
      --settings default,channels_last,channels_last+compile --tag "${TAG}_r50_224"
  fi

  echo "=== summary (part $PART, total $((SECONDS - T0)) s; goals of issue #19: lvmmed/simclr <= 1.10, overhead <= 10%)"
  for r in "${ROWS[@]}"; do
    IFS='|' read -r name status secs json <<<"$r"
    python3 - "$name" "$status" "$secs" "$RESULTS/$json" <<'EOF'
import json, sys
from pathlib import Path
name, status, secs, path = sys.argv[1:]
line = f"{name:16s} {status:9s} {secs:>4s} s"
if status == "pass" and Path(path).is_file():
    d = json.loads(Path(path).read_text())
    kind = d.get("benchmark", "view_costs")
    if kind == "lvmmed_step":
        s = d["seconds"]
        line += (f"  batch {d['settings']['batch_size']}: lvmmed {s['lvmmed_step']:.3f} s, floor {s['backbone_only_step']:.3f},"
                 f" simclr {s['simclr_step']:.3f}, solver {s['solver_per_step']:.3f}; overhead"
                 f" {d['lvmmed_overhead_share']:.1%}, lvmmed/simclr {d['ratio_lvmmed_over_simclr']:.2f}; goals"
                 f" {'met' if all(d.get('goals', {}).values()) else 'NOT met'}")
    elif kind == "pretrain_step":
        line += (f"  bench/lightly {d['ratio_bench_over_lightly_recipe']:.2f}, bench/same computation"
                 f" {d['ratio_bench_over_bare_same_computation']:.2f}; img/s "
                 + " ".join(f"{m} {v['images_per_s']:.0f}" for m, v in d["methods"].items()))
    elif kind in ("speed_options", "loader_overhead"):  # images/s of each setting or source over the reference's
        ref = "default" if kind == "speed_options" else "premade"
        line += f"  img/s over {ref}: " + "; ".join(m + " " + " ".join(f"{k} {v:.2f}" for k, v in r[f"ratio_over_{ref}"].items()
                                                                     if k != ref) for m, r in d["methods"].items())
    else:
        batch = next(k for k in next(iter(d["methods"].values())) if k.startswith("device_side_ms_per_batch"))
        line += f"  device path ms/img (packed) | {batch.rsplit('_', 1)[1]}-batch ms on the device: " + " ".join(
            f"{m} {r['device_path_from_packed_ms_per_image']}|{r[batch]}" for m, r in d["methods"].items())
    line += f"  -> {Path(path).name}"
print(line)
EOF
  done
  if [ -n "${OUT:-}" ]; then echo "in \$OUT: $(ls "$OUT" | tr '\n' ' ')"; fi
  return $FAILED
}

ROWS=()      # "name|status|seconds|json"
FAILED=0
# row NAME EXPECTED_S JSON -- command...
row() {
  local name=$1 expect=$2 json=$3; shift 4
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local left=$((BUDGET_S - (SECONDS - T0))) limit=()
  if [ "$SMOKE" != 1 ]; then
    if [ "$left" -lt "$expect" ]; then
      echo "=== $name: SKIPPED ($left s left of BUDGET_S, needs ~$expect s): rerun with ONLY=\"$name\""
      ROWS+=("$name|skipped|0|$json"); FAILED=1; return
    fi
    limit=(timeout -k 10 "$left")
  fi
  echo "=== $name ($(date +%H:%M:%S), $left s left): $*"
  local t=$SECONDS status=pass
  "${limit[@]}" "$@" || status="FAIL($?)"
  [ "$status" = pass ] || FAILED=1
  ROWS+=("$name|$status|$((SECONDS - t))|$json")
  stamp "$RESULTS/$json"
  if [ -n "${OUT:-}" ] && [ -f "$RESULTS/$json" ]; then cp "$RESULTS/$json" "$OUT/"; fi
  echo "=== $name: $status, $((SECONDS - t)) s"
}

# The device gets no .git, so a result's `code` reads "unknown" there: fill it from .whl/code.txt (gpu_wheels.sh:
# commit, clean/dirty, hash of the code) when the code here hashes the same.
stamp() {
  python3 benchmarks/code_stamp.py stamp "$1"
}

if [ -n "${OUT:-}" ]; then
  main 2>&1 | tee "$OUT/run_gpu.log"
  exit "${PIPESTATUS[0]}"
fi
main
