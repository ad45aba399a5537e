#!/usr/bin/env bash
# One command for a CUDA machine: the kernels' GPU tests, the kernel micro-benchmark
# (Triton vs PyTorch eager and scaled_dot_product_attention, fp16 and bf16), the attention
# allocation count, and the benchmark suite (distilbert bench) against transformers and
# sentence-transformers at distilbert-base size in fp16 and bf16 (random weights: no hub).
# Results go to benchmarks/results/, or, when $OUT is set (the device tool), into one
# archive $OUT/gpu_results.tar.gz (the tool brings back at most 8 files).
#
#   benchmarks/gpu_check.sh            # on a CUDA machine (about 10 minutes on an H200)
#   benchmarks/gpu_check.sh --dry-run  # anywhere: collects the GPU tests, runs the kernel
#                                      # benchmark on tiny shapes in the Triton interpreter
#                                      # and the suite's wiring on CPU; results in a temp dir
#
# Environment: PYTHON (default .venv/bin/python, else python3), OUT (archive folder).
# Exit status: 0 when every step passed, 1 when any failed (the later steps still run),
# 2 when there is no CUDA device and --dry-run was not given.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if [[ ! -x "$PYTHON" ]]; then
    PYTHON=python3
fi
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
fi
WORK=$(mktemp -d)
CHECKPOINT=$WORK/distilbert-base-random
trap 'rm -rf "$CHECKPOINT"' EXIT
if [[ -n "${OUT:-}" || $DRY_RUN -eq 1 ]]; then
    RESULTS=$WORK/results
else
    RESULTS=benchmarks/results
fi
mkdir -p "$RESULTS"

HAS_CUDA='import sys, torch; sys.exit(not torch.cuda.is_available())'
if [[ $DRY_RUN -eq 0 ]] && ! "$PYTHON" -c "$HAS_CUDA"; then
    echo "gpu_check: no CUDA device visible to $PYTHON; use --dry-run to check the script" >&2
    exit 2
fi

status=0
step() {
    # step NAME COMMAND...: run, tee the output to $RESULTS/NAME.log, remember failures.
    local name=$1
    shift
    echo "== $name: $*"
    if ! "$@" 2>&1 | tee "$RESULTS/$name.log"; then
        echo "== $name FAILED (log: $RESULTS/$name.log)" >&2
        status=1
    fi
}

"$PYTHON" - <<'PY' | tee "$RESULTS/gpu_check_context.txt"
import platform, subprocess, torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "not installed"
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"device: {device}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
      f"triton {triton_version}; Python {platform.python_version()}; commit {commit}")
PY

step base_checkpoint "$PYTHON" benchmarks/make_base_checkpoint.py "$CHECKPOINT"

if [[ $DRY_RUN -eq 1 ]]; then
    step gpu_tests_collect "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu --collect-only \
        tests/kernels
    step kernel_bench_dryrun "$PYTHON" benchmarks/kernel_bench.py --dry-run --out "$RESULTS"
    step suite_dryrun "$PYTHON" -m distilbert bench --device cpu --dtype bfloat16 --quick \
        --model "$CHECKPOINT" --workloads latency,memory --providers distilbert,transformers-sdpa \
        --rounds 1 --out "$RESULTS"
else
    step gpu_tests timeout 1200 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu \
        --junitxml "$RESULTS/gpu_tests.xml" tests/kernels
    step kernel_bench timeout 900 "$PYTHON" benchmarks/kernel_bench.py --out "$RESULTS"
    step alloc_attention timeout 300 "$PYTHON" benchmarks/alloc_attention.py --device cuda \
        --out "$RESULTS/alloc_attention_cuda.md"
    for dtype in float16 bfloat16; do
        step "suite_$dtype" timeout 600 "$PYTHON" -m distilbert bench --device cuda \
            --dtype "$dtype" --model "$CHECKPOINT" --rounds 3 --out "$RESULTS"
    done
fi

if [[ -n "${OUT:-}" ]]; then
    tar -czf "$OUT/gpu_results.tar.gz" -C "$RESULTS" .
    echo "gpu_check: results in $OUT/gpu_results.tar.gz (status $status)"
else
    echo "gpu_check: results in $RESULTS (status $status)"
fi
exit $status
