#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels that benchmarks/run_gpu.sh's benchmarks import and the GPU machine's
# image lacks, for its python3 (CPython 3.12, manylinux x86_64); run_gpu.sh installs them with
# `pip install --no-index --no-deps --target /tmp/site`. bench itself travels as the checkout (run_gpu.sh puts its
# folders on PYTHONPATH), so the wheels do not go stale when the code changes; rebuild them when requirements.txt does.
# Also records the commit and a hash of the code in .whl/code.txt, which run_gpu.sh checks and stamps into the
# results (the device gets no .git, so the benchmarks' own `code` field reads "unknown" there).
#
#   bash benchmarks/gpu_wheels.sh        # then carry [".whl"] in the device call (README: "Running the GPU rows")
#
# The list is what a rehearsal proved needed (Python 3.12 + torch 2.11 + the image's packages, SMOKE=1): the image
# already has torch, torchvision, numpy, scipy, pillow, opencv-python-headless, rich, typer, pyyaml, matplotlib,
# pandas, tqdm, safetensors, pytorch-lightning, torchmetrics, timm, ... (docs in README), so none of those is here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}

# At requirements.txt's pin: lightly (the bare loop, every method's transforms), mmengine (bench's Runner), kornia
# (device views), pydicom + nibabel (the phantom corpus's DICOM and NIfTI files), optuna (methods import its
# distributions). Not wids (remote packs only), SQLAlchemy/alembic (optuna imports them only for its RDB storage),
# nor lightly's declared hydra-core/pytorch-lightning (never imported by what runs; the image has pytorch-lightning).
PINNED=(lightly mmengine kornia pydicom nibabel optuna)
# Their imported dependencies that the image lacks (requirements.txt does not pin them: the versions in .venv).
EXTRA=(kornia_rs==0.2.0 addict==2.4.0 termcolor==3.3.0 yapf==0.43.0 platformdirs==4.14.9 colorlog==6.12.0)

specs=()
for name in "${PINNED[@]}"; do
  pin=$(grep -i -E "^${name}==" requirements.txt | sed -E 's/[[:space:]]*#.*//; s/[[:space:]]+$//') \
    || { echo "no pin for $name in requirements.txt" >&2; exit 1; }
  specs+=("$pin")
done
specs+=("${EXTRA[@]}")

rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${specs[@]}"

# the code the wheels were made for: run_gpu.sh recomputes the hash on the device and stamps the results
"$PY" benchmarks/code_stamp.py record

echo "wheels in .whl/ (code: $(cat .whl/code.txt)):"
ls -1 .whl/*.whl | sed 's|^.whl/|  |'
du -sh .whl | awk '{print "total " $1}'
