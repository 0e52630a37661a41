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
