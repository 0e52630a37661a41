#!/usr/bin/env bash
# The GPU figures in benchmarks/README.md: R50 at 224, batch 256, bf16, on one GPU.
# Run from the repository root on a CUDA machine that has torch/torchvision; lightly, mmengine and
# their pure-Python dependencies can come as wheels in .whl/ (see the device notes in the README).
set -euo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
TAG=${TAG:-gpu}
python3 benchmarks/lvmmed_step.py --device cuda --backbone resnet50 --image-size 224 --batch-size 256 --amp \
  --repeats 5 --warmup 2 --tag "${TAG}_r50_224"
python3 benchmarks/pretrain_step.py --device cuda --backbone resnet50 --image-size 224 --batch-size 256 --amp \
  --steps 10 --rounds 2 --warmup 3 --distinct-batches 2 --tag "${TAG}_r50_224"
# issue #21: views on the host vs the device, and the real loader (packed corpus, device views) vs premade views
python3 benchmarks/view_costs.py --device cuda --batch 256 --out "benchmarks/results/view_costs_${TAG}.json"
python3 benchmarks/loader_overhead.py --device cuda --backbone resnet50 --image-size 224 --batch-size 256 --amp \
  --image-side 320 --images 4096 --steps 10 --rounds 2 --methods simclr,dino --tag "${TAG}_r50_224"
