#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one unattended call of a lent GPU machine (issue 25):
#
#     bash benchmarks/gpu.sh              # on the device: the table in $OUT/gpu_bench.md
#     OUT=/tmp/x bash benchmarks/gpu.sh --dry-run   # toy sizes on the CPU (make test runs it)
#
# Runs deepest from this source tree (PYTHONPATH) with the machine's python3 ($PYTHON if
# set) and installs nothing: the device has no network, and `pip install -e .` would need
# hatchling. bench_gpu.py prints the environment first, stops naming any missing package,
# writes each row to $OUT/gpu_bench.md as it finishes, and skips the rows that would not fit
# its wall budget (GPU_BENCH_BUDGET seconds, default 540); `timeout` stops it 30 s after
# that whatever happens, so the whole fits one 10-minute call with margin. Extra arguments
# go to bench_gpu.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
budget="${GPU_BENCH_BUDGET:-540}"
out="${OUT:?set OUT to the folder that receives gpu_bench.md}"
mkdir -p "$out"

if ! command -v "$python" >/dev/null; then
    echo "gpu.sh: no interpreter $python (set PYTHON)" >&2
    exit 2
fi
echo "gpu.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), python: $(command -v "$python")"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

# Outside a dry run, JAX must find the GPU: with JAX_PLATFORMS naming cuda, a CUDA that
# fails to start stops the run instead of leaving every GPU row skipped on the CPU.
if [[ " $* " != *" --dry-run "* && " $* " != *" --quick "* ]]; then
    export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda,cpu}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export OPENBLAS_NUM_THREADS=1
timeout --kill-after=10 "$((${budget%.*} + 30))" \
    "$python" benchmarks/bench_gpu.py --budget "$budget" --out "$out/gpu_bench.md" "$@"
