#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md, in one prepared run (under 8 minutes on an H200):
# 4096 paths x 31 β on L = 12 and L = 8, float64 and float32, L-BFGS and LM, and the
# same rows at 64 paths on the CPU for the ratio. Needs jax with CUDA, equinox, diffrax,
# optax, optimistix, lineax (installed on the device machine); deepest from this tree.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q --no-deps -e . 2>/dev/null || true
OPENBLAS_NUM_THREADS=1 timeout 470 python benchmarks/bench_gpu.py "$@" | tee "${OUT:-.}/gpu_bench.md"
