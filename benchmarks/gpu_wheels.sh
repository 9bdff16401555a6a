#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh needs on a bare GPU machine: one that has torch,
# torchvision, triton, numpy, pillow, pyyaml, pyarrow, fsspec and timm but no network, and none
# of pytest, TorchRay (and the matplotlib it imports), Captum, Ray or WebDataset. Run it here
# (with a package index), then carry the folder with the working tree:
#
#     bash benchmarks/gpu_wheels.sh            # -> .gpu_wheels/ (git-ignored), ~25 MB
#     GPU_PYTHON=3.12 bash benchmarks/gpu_wheels.sh   # the GPU machine's Python, for binary wheels
#
# gpu_check.sh installs them with `pip install --no-index --no-deps --target .gpu_site` (nothing
# of the machine's own environment changes) and puts .gpu_site on PYTHONPATH. No Ray: the
# pipeline's GPU test is skipped there (tests/gpu/test_pipeline_cuda.py).

set -euo pipefail
cd "$(dirname "$0")/.." || exit 2

PYTHON=${PYTHON:-python}
OUT=${GPU_WHEELS_DIR:-.gpu_wheels}
GPU_PYTHON=${GPU_PYTHON:-3.11}   # major.minor of the GPU machine's Python
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

mkdir -p "$OUT"
# Pure Python: the tests' runner, Captum (the gradient family's reference) and its tqdm.
"$PYTHON" -m pip download --no-deps --only-binary=:all: -d "$OUT" \
    "pytest>=8" pluggy iniconfig pygments packaging "captum>=0.9,<0.10" tqdm cycler pyparsing python-dateutil six
# TorchRay ships as a source archive only: build its (pure Python) wheel here.
"$PYTHON" -m pip wheel --no-deps -w "$OUT" torchray==1.0.0.2
# TorchRay imports matplotlib.pyplot at import time: matplotlib and its compiled dependencies,
# for the GPU machine's Python and platform.
"$PYTHON" -m pip download --no-deps --only-binary=:all: "${PLATFORMS[@]}" --python-version "$GPU_PYTHON" \
    -d "$OUT" matplotlib kiwisolver contourpy fonttools
du -sh "$OUT"
ls "$OUT"
