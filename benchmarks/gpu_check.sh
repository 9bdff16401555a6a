#!/usr/bin/env bash
# GPU checks in one call (<= 8 minutes) on a bare GPU machine: torch, torchvision, triton, numpy,
# pillow, pyyaml, pyarrow, fsspec, timm, no network, no Ray. Prepare here, carry .gpu_wheels/:
#
#     bash benchmarks/gpu_wheels.sh          # once, where a package index is reachable
#     bash benchmarks/gpu_check.sh           # on the GPU machine, from the repo root
#     bash benchmarks/gpu_check.sh --dry-run # anywhere: every step on the CPU at toy sizes
#
# Steps, each logged to benchmarks/results/gpu_check.log (this run's log replaces the last one):
#   env          GPU name and memory, commit, Python / torch / CUDA versions
#   wheels       .gpu_wheels/*.whl installed into .gpu_site (put on PYTHONPATH), when present
#   -- exits 3 here when torch sees no CUDA device (unless --dry-run) --
#   engine-bf16  bench_core.py --gpu: ResNet-50 (random weights) at 224², areas 0.05/0.1/0.2,
#                B = 32 and 64, bf16 autocast + channels_last, compile auto: images/s, MFU, ms
#                per iteration split into mask generation / network / rest. No TorchRay.
#   engine-fp32  the same in fp32 (TF32 as torch's default), then TorchRay's images/s on
#                GPU_CHECK_TR_IMAGES images and its masks against ours
#   repro        CUDA vs CPU masks (benchmarks/reproducibility.py --paths native,pytorch,cuda)
#   pytest       python -m pytest -q -m gpu tests/gpu (sync-free loop, 224² chunks, bf16 vs fp32, ...)
# JSON results: benchmarks/results/{bench_core_gpu_bf16,bench_core_gpu_fp32,reproducibility_gpu}.json.
#
# A failing step does not stop the others; the script ends with a summary and exits 1 when any
# step failed, 0 when all passed, 3 without CUDA. Each step has a cap and all share
# GPU_CHECK_TOTAL_S (default 470 s). Knobs: PYTHON (python), GPU_CHECK_ITERS (100 iterations:
# ms per iteration and images/s at 800 iterations follow from it), GPU_CHECK_BATCHES (32,64),
# GPU_CHECK_TR_IMAGES (2).

set -u
cd "$(dirname "$0")/.." || exit 2

DRY=0
[[ ${1:-} == --dry-run ]] && DRY=1
PYTHON=${PYTHON:-python}
RESULTS=benchmarks/results
LOG=$RESULTS/gpu_check.log
TOTAL_S=${GPU_CHECK_TOTAL_S:-470}
ITERS=${GPU_CHECK_ITERS:-100}
BATCHES=${GPU_CHECK_BATCHES:-32,64}
TR_IMAGES=${GPU_CHECK_TR_IMAGES:-2}
ENGINE_CAP=140
REPRO_CAP=80
ENGINE=(--gpu --gpu-model resnet50 --gpu-size 224 --gpu-iters "$ITERS" --gpu-batches "$BATCHES" --split-reps 3)
REPRO=(--case demo --paths native,pytorch,cuda --no-torchray --no-noise --images 8 --iters 100)
if ((DRY)); then  # the same steps on the CPU, at sizes that run in seconds
    RESULTS=$(mktemp -d)
    LOG=$RESULTS/gpu_check.log
    ENGINE=(--gpu --device cpu --gpu-model resnet18 --gpu-size 64 --gpu-iters 2 --gpu-batches 2 --split-reps 1 --threads 1)
    REPRO=(--case demo --paths native,pytorch --no-torchray --images 2 --iters 5)
    TR_IMAGES=1
    ENGINE_CAP=300  # bf16 convolutions are slow on CPUs without bf16 units
    REPRO_CAP=300   # the first run trains the demo CNN
    TOTAL_S=${GPU_CHECK_TOTAL_S:-900}
fi
# Shared or small CPU hosts: spinning OpenMP threads would slow the CPU reference runs many-fold.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

mkdir -p "$RESULTS"
: >"$LOG"
deadline=$((SECONDS + TOTAL_S))
failed=()

say() { echo "$*" | tee -a "$LOG"; }

# step NAME CAP_S CMD...: run CMD with its output shown and appended to the log, capped at
# min(CAP_S, time left); record NAME as failed on a non-zero exit.
step() {
    local name=$1 cap=$2 left rc start
    shift 2
    left=$((deadline - SECONDS))
    ((left < 0)) && left=0
    ((cap > left)) && cap=$left
    say ""
    say "=== [$name] $* (cap ${cap} s)"
    if ((cap < 10)); then
        say "=== [$name] skipped: the ${TOTAL_S} s budget is spent"
        failed+=("$name (skipped, no time left)")
        return
    fi
    start=$SECONDS
    timeout --kill-after=15 "$cap" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    say "=== [$name] exit $rc after $((SECONDS - start)) s"
    ((rc == 124)) && say "=== [$name] stopped at its ${cap} s cap"
    ((rc != 0)) && failed+=("$name (exit $rc)")
}

summary() {
    say ""
    if ((${#failed[@]})); then
        say "gpu_check: FAILED steps: ${failed[*]}"
    else
        say "gpu_check: all steps passed"
    fi
    say "gpu_check: log $LOG, total $SECONDS s"
}

# --- environment and wheels (no GPU needed) ------------------------------------------------
say "=== [env] $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)$( ((DRY)) && echo ' (dry run: CPU, toy sizes)')"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee -a "$LOG"
fi
commit=$(git rev-parse --short HEAD 2>/dev/null) || commit=unknown
if [[ $commit != unknown && -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    commit="$commit (with uncommitted changes)"
fi
say "commit: $commit"
if compgen -G ".gpu_wheels/*.whl" >/dev/null && ! ((DRY)); then
    step wheels 60 "$PYTHON" -m pip install -q --no-index --no-deps --target .gpu_site .gpu_wheels/*.whl
fi
[[ -d .gpu_site ]] && ! ((DRY)) && export PYTHONPATH=$PWD/.gpu_site${PYTHONPATH:+:$PYTHONPATH}
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda)" 2>&1 | tee -a "$LOG"

if ! ((DRY)); then
    cuda=$("$PYTHON" -c "import torch; print(torch.cuda.is_available())" 2>>"$LOG")
    if [[ $cuda == False ]]; then
        say "gpu_check: no CUDA device visible (torch.cuda.is_available() is False): nothing to check"
        exit 3
    elif [[ $cuda != True ]]; then  # torch itself failed to import: see the log
        failed+=("cuda-check (torch.cuda.is_available() did not answer)")
        summary
        exit 1
    fi
fi

# --- engine numbers first, then TorchRay, then agreement and tests ----------------------------
step engine-bf16 "$ENGINE_CAP" "$PYTHON" benchmarks/bench_core.py "${ENGINE[@]}" --autocast bfloat16 --channels-last \
    --no-torchray --out "$RESULTS/bench_core_gpu_bf16.json"
step engine-fp32 "$ENGINE_CAP" "$PYTHON" benchmarks/bench_core.py "${ENGINE[@]}" --channels-last --tr-images "$TR_IMAGES" \
    --out "$RESULTS/bench_core_gpu_fp32.json"
step repro "$REPRO_CAP" "$PYTHON" benchmarks/reproducibility.py "${REPRO[@]}" --out "$RESULTS/reproducibility_gpu.json"
if ((DRY)); then
    step pytest 60 "$PYTHON" -m pytest -q -m gpu tests/gpu --co
else
    step pytest 110 "$PYTHON" -m pytest -q -m gpu tests/gpu
fi

summary
((${#failed[@]} == 0))
