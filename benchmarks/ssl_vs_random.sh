#!/usr/bin/env bash
# Does a SimCLR checkpoint beat random init on synthetic data? (issues #4 and #5's pipeline-sanity
# question; figures in benchmarks/README.md). Pretrains in-domain: the corpus is the task's
# train + val images (never test), flagged synthetic.
#   [PROTOCOLS=linear,knn] [FRACTIONS=1.0] [PRETRAIN_ARGS="--set optimizer=adamw"] benchmarks/ssl_vs_random.sh [TASK] [N_IMAGES] [SIZE] [EPOCHS] [OUT]
# e.g. benchmarks/ssl_vs_random.sh brain_tumor 600 64 30 /tmp/ssl-vs-random
#      PROTOCOLS=finetune FRACTIONS=0.1,1.0 benchmarks/ssl_vs_random.sh kvasir_seg 600 64 30 /tmp/seg
set -euo pipefail
TASK=${1:-brain_tumor}; N=${2:-600}; SIZE=${3:-64}; EPOCHS=${4:-30}; OUT=${5:-/tmp/ssl-vs-random}
PROTOCOLS=${PROTOCOLS:-linear,knn}; FRACTIONS=${FRACTIONS:-1.0}; PRETRAIN_ARGS=${PRETRAIN_ARGS:-}
BENCH="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/bench"
rm -rf "$OUT" && mkdir -p "$OUT/corpus/$TASK-train"
"$BENCH" data synth "$TASK" --out "$OUT/raw" --n "$N" --seed 0 --size "$SIZE"
"$BENCH" data prepare "$TASK" --src "$OUT/raw" --out "$OUT/data" --workspace "$OUT/ws"
DATA="$OUT/data/$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['dataset'])" "$OUT"/data/*/dataset.json)"
python3 - "$DATA" "$OUT/corpus/$TASK-train" <<'PY'
import csv, os, sys
data, corpus = sys.argv[1], sys.argv[2]
for row in csv.DictReader(open(os.path.join(data, "samples.csv"))):
    if row["split"] != "test":
        image = row.get("path") or row["image"]  # classification / segmentation sample lists
        os.symlink(os.path.join(data, image), os.path.join(corpus, os.path.basename(image)))
open(os.path.join(corpus, "dataset.json"), "w").write('{"synthetic": true}\n')
PY
"$BENCH" pretrain --method simclr --profile quick --corpus "$OUT/corpus" --workspace "$OUT/ws" --image-size "$SIZE" \
    --epochs "$EPOCHS" --name "simclr-$EPOCHS" $PRETRAIN_ARGS
"$BENCH" eval --checkpoint "simclr-$EPOCHS,random" --task "$TASK" --protocol "$PROTOCOLS" --seeds 3 \
    --label-fraction "$FRACTIONS" \
    --image-size "$SIZE" --workspace "$OUT/ws" --data-root "$OUT/data"
