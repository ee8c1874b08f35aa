"""Annealing on a GPU: 4096 paths x 31 β on L = 12 and L = 8, float64 and float32, both
minimisers; the same rows at 64 paths on the CPU for the ratio. Run by `benchmarks/gpu.sh`.

    python benchmarks/bench_gpu.py [--paths 4096] [--cpu-paths 64] [--quick]
"""

import argparse
import os
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import deepest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.helpers import config_problem  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--paths", type=int, default=4096)
    parser.add_argument("--cpu-paths", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="256 GPU, 8 CPU paths, L12 only")
    args = parser.parse_args()
    if args.quick:
        args.cpu_paths = 8
    configs = ["L12"] if args.quick else ["L12", "L8"]
    n_gpu = 256 if args.quick else args.paths
    backends = [("gpu", n_gpu)] if jax.default_backend() == "gpu" else []
    backends.append(("cpu", args.cpu_paths))
    print(f"machine: {platform.machine()}, devices {jax.devices()}, jax {jax.__version__}\n")
    print(
        "| config | device | dtype | minimiser | paths | time (s) | time per path (ms) "
        "| evaluations per path | converged | lowest final action |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in configs:
        problem, schedule, _, _, config = config_problem(f"lorenz96_{name}.yaml")
        for backend, n in backends:
            devices = jax.devices(backend)
            for dtype in (jnp.float64, jnp.float32):
                for label, minimiser in (
                    ("L-BFGS", deepest.LBFGS()),
                    ("LM", deepest.LevenbergMarquardt()),
                ):
                    start = time.perf_counter()
                    r = deepest.anneal(
                        problem,
                        schedule,
                        n,
                        jr.key(1),
                        minimiser=minimiser,
                        dtype=dtype,
                        devices=devices,
                        progress=False,
                    )
                    total = time.perf_counter() - start
                    print(
                        f"| {name} | {backend} | {jnp.dtype(dtype).name} | {label} | {n} | "
                        f"{r.stats['run_time']:.2f} (+{total - r.stats['run_time']:.1f} "
                        f"compile) | {1e3 * r.stats['run_time'] / n:.3f} | "
                        f"{r.iterations.sum(0).mean():.0f} | {r.converged.mean():.3f} | "
                        f"{np.nanmin(r.action[-1]):.6g} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
