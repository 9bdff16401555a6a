#!/usr/bin/env bash
# GPU checks for a session lent one GPU (an H100): run from the repo root,
#
#     bash benchmarks/gpu_check.sh
#
# Steps, each logged to benchmarks/results/gpu_check.log (this run's log replaces the last one):
#   env          GPU name and memory (nvidia-smi), commit, Python / torch / CUDA versions
#   collect      python -m pytest -q -m gpu tests/gpu --co   (imports and collects; no GPU needed)
#   -- stops here with exit 3 when torch sees no CUDA device --
#   pytest       python -m pytest -q -m gpu tests/gpu         (CUDA vs CPU, memory budget, GPU pipeline)
#   repro        benchmarks/reproducibility.py --case demo --paths native,pytorch,cuda [REPRO_ARGS]
#   bench-fp32   benchmarks/bench_core.py --gpu [BENCH_ARGS]   (ResNet-50 at 224, B = 8, 32, 64)
#   bench-bf16   the same with --autocast bfloat16 --channels-last
#   methods      benchmarks/bench_methods.py --device cuda  (the comparison methods vs TorchRay's, ResNet-18)
# JSON results go to benchmarks/results/{reproducibility_gpu,bench_core_gpu_fp32,bench_core_gpu_bf16,bench_methods_gpu}.json.
#
# A failing step does not stop the others (one broken step must not hide the other numbers); the
# script ends with a summary and exits 1 when any step failed, 0 when all passed, 3 without CUDA.
# Each step has a time cap and all of them share TOTAL_S, so the whole run stays under 8 minutes;
# a step cut by its cap counts as failed (exit 124).
#
# Environment knobs: PYTHON (default python); GPU_CHECK_TOTAL_S (default 450);
# GPU_CHECK_REPRO_ARGS, extra reproducibility.py arguments (default "--no-torchray": TorchRay's
# control runs on the CPU whatever the machine, 16 images x 300 iterations one image at a time,
# minutes that the CPU build machine can spend instead); GPU_CHECK_BENCH_ARGS, extra bench_core.py
# arguments (default "--gpu-iters 200 --no-maskgen-compare": a quarter of the default 800
# iterations, since images/s and MFU do not depend on the count, and no torch.compile prototype,
# whose compile time is unbounded). A knob set to "" passes nothing: that script's own defaults.

set -u
cd "$(dirname "$0")/.." || exit 2

PYTHON=${PYTHON:-python}
RESULTS=benchmarks/results
LOG=$RESULTS/gpu_check.log
TOTAL_S=${GPU_CHECK_TOTAL_S:-450}
DEFAULT_REPRO_ARGS="--no-torchray"
DEFAULT_BENCH_ARGS="--gpu-iters 200 --no-maskgen-compare"
REPRO_ARGS=${GPU_CHECK_REPRO_ARGS-$DEFAULT_REPRO_ARGS}  # set but empty: no extra arguments
BENCH_ARGS=${GPU_CHECK_BENCH_ARGS-$DEFAULT_BENCH_ARGS}
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

# --- environment (no GPU needed) -----------------------------------------------------------
say "=== [env] $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee -a "$LOG"
else
    say "nvidia-smi: not found"
fi
commit=$(git rev-parse --short HEAD 2>/dev/null) || commit=unknown
if [[ $commit != unknown && -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    commit="$commit (with uncommitted changes)"
fi
say "commit: $commit"
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda)" 2>&1 | tee -a "$LOG"

step collect 60 "$PYTHON" -m pytest -q -m gpu tests/gpu --co

# --- everything below needs CUDA -------------------------------------------------------------
cuda=$("$PYTHON" -c "import torch; print(torch.cuda.is_available())" 2>>"$LOG")
if [[ $cuda == False ]]; then
    ((${#failed[@]})) && say "gpu_check: FAILED steps: ${failed[*]}"
    say "gpu_check: no CUDA device visible (torch.cuda.is_available() is False): nothing to check"
    exit 3
elif [[ $cuda != True ]]; then  # torch itself failed to import: see the log
    failed+=("cuda-check (torch.cuda.is_available() did not answer)")
    summary
    exit 1
fi

step pytest 150 "$PYTHON" -m pytest -q -m gpu tests/gpu
# shellcheck disable=SC2086  # REPRO_ARGS and BENCH_ARGS are lists of words
step repro 150 "$PYTHON" benchmarks/reproducibility.py --case demo --paths native,pytorch,cuda $REPRO_ARGS \
    --out "$RESULTS/reproducibility_gpu.json"
# shellcheck disable=SC2086
step bench-fp32 100 "$PYTHON" benchmarks/bench_core.py --gpu $BENCH_ARGS --out "$RESULTS/bench_core_gpu_fp32.json"
# shellcheck disable=SC2086
step bench-bf16 80 "$PYTHON" benchmarks/bench_core.py --gpu --autocast bfloat16 --channels-last $BENCH_ARGS \
    --out "$RESULTS/bench_core_gpu_bf16.json"
# The comparison methods against TorchRay's on the GPU (ResNet-18, 224², 32 images).
step methods 90 "$PYTHON" benchmarks/bench_methods.py --device cuda --cases resnet18 --images 32 --repeats 2 \
    --resnet-masks 2000 --resnet-iters 100 --skip-bytes --out "$RESULTS/bench_methods_gpu.json"

summary
((${#failed[@]} == 0))
