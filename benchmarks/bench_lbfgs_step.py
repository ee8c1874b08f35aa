"""What one L-BFGS step costs per path when the paths are vmapped, against the serial
baseline's cost per evaluation: the ceiling on `deepest.anneal`'s speed-up with L-BFGS.

On the L = 12 Lorenz-96 config (n = 3221 unknowns per path), in compiled loops of 300
steps at 16 and 64 lanes, after a warm-up:

- the vmapped value-and-gradient of the action alone;
- the same plus `optax.scale_by_lbfgs`'s update (memory write and two-loop recursion) with
  one memory slot counter for all lanes (as `deepest.LBFGS` runs it), for history 3, 5, 10;

and, in the same run, scipy L-BFGS-B (the serial baseline of `bench_anneal.py`) on
`--serial-paths` paths: its wall time per function evaluation. The ratio of the two is the
largest speed-up an L-BFGS built on optax can reach with as many evaluations as scipy, with
no line search and no bookkeeping of its own.

    python benchmarks/bench_lbfgs_step.py [--quick] [--lanes 16 64] [--histories 3 5 10]
"""

import argparse
import os
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.flatten_util  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_anneal import load  # noqa: E402
from serial_baseline import serial_anneal  # noqa: E402


def per_lane_step(value_and_grad, y, history=None, n_steps=300):
    """Seconds per lane and step of a compiled loop of vmapped gradient (+ L-BFGS) steps."""
    if history is None:

        def body(_, carry):
            y, state = carry
            _, g = value_and_grad(y)
            return y - 1e-9 * g, state

        state = ()
    else:
        tx = optax.scale_by_lbfgs(history)
        state = jax.vmap(tx.init)(y)
        state = state._replace(count=jnp.asarray(0, jnp.arange(1).dtype))
        axes = jax.tree.map(lambda _: 0, state)._replace(count=None)
        update = jax.vmap(tx.update, in_axes=(0, axes, 0), out_axes=(0, axes))

        def body(_, carry):
            y, state = carry
            _, g = value_and_grad(y)
            d, state = update(g, state, y)
            return y - 1e-9 * d, state

    loop = jax.jit(lambda y, state: jax.lax.fori_loop(0, n_steps, body, (y, state)))
    jax.block_until_ready(loop(y, state))
    start = time.perf_counter()
    jax.block_until_ready(loop(y, state))
    return (time.perf_counter() - start) / (n_steps * y.shape[0])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lanes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--histories", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--serial-paths", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="16 lanes, history 5, 1 serial path")
    args = parser.parse_args()
    if args.quick:
        args.lanes, args.histories, args.serial_paths = [16], [5], 1
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}\n")
    problem, schedule, config = load("L12")
    init = jax.vmap(problem.init)(jr.split(jr.key(config["anneal"]["seed"]), max(args.lanes)))
    serial = serial_anneal(problem, schedule, jax.tree.map(lambda a: a[: args.serial_paths], init))
    per_eval = serial["run_time"] / serial["iterations"].sum()
    print(f"serial scipy L-BFGS-B: {per_eval * 1e6:.0f} µs per evaluation\n")
    _, unravel = jax.flatten_util.ravel_pytree(jax.tree.map(lambda a: a[0], init))
    rf = jnp.asarray(schedule.rf[-1])
    value_and_grad = jax.vmap(jax.value_and_grad(lambda y: problem.action(unravel(y), rf)))
    print("| lanes | step | µs per lane and step | ceiling on the speed-up vs serial |")
    print("|---|---|---|---|")
    y_all = jax.vmap(lambda u: jax.flatten_util.ravel_pytree(u)[0])(init)
    for lanes in args.lanes:
        y = y_all[:lanes]
        for history in [None] + args.histories:
            t = per_lane_step(value_and_grad, y, history)
            name = "value-and-grad" if history is None else f"+ optax L-BFGS, history {history}"
            print(f"| {lanes} | {name} | {t * 1e6:.0f} | {per_eval / t:.1f}x |")


if __name__ == "__main__":
    main()
