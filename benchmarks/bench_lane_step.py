"""Where one annealing loop step goes, per lane, on the L = 12 Lorenz-96 config (n = 3221
unknowns per path): the whole lane step of `deepest.anneal`'s loop (L-BFGS, preconditioned,
history 10) against its parts, each in a compiled loop of `--steps` steps over `--lanes`
lanes, CPU time per lane and step (best of 5, after a warm-up):

- the minimiser's step alone (each lane at its own β, as in the loop) and the whole step
  of `LBFGS(precondition=False)`: the loop's bookkeeping and the preconditioner in place;
- the vmapped value-and-gradient of the action (the floor of any step);
- the tridiagonal preconditioner's two solves, L⁻¹g and L⁻ᵀz (a sequential scan on a CPU);
- the compact L-BFGS memory products (two memories of m = 10 float32 rows: the products
  with three vectors, then the direction's two), with the vectors stacked as rows (k, n),
  as the step does, and as columns (n, k), as it did before.

Then what no rewrite of the step's bookkeeping removes (one evaluation, the two solves, the
two passes over the memories) against the value-and-gradient, and what a step within 3×
the value-and-gradient (issue 25's target) would leave for everything else.

Run on one core (`taskset -c 0`): XLA may spread a large operation over other cores.

    OPENBLAS_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_lane_step.py [--lanes 4 64]
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
from deepest._annealing._loop import LoopConfig, _lane_functions  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_anneal import load  # noqa: E402


def per_lane_step(loop, x, lanes, steps):
    """Microseconds of CPU time per lane and step of the compiled `loop(x)`."""
    loop = jax.jit(loop)
    jax.block_until_ready(loop(x))
    best = np.inf
    for _ in range(5):
        start = time.process_time()
        jax.block_until_ready(loop(x))
        best = min(best, time.process_time() - start)
    return 1e6 * best / (steps * lanes)


ROWS = "memory products, vectors as rows"


def lane_step(problem, schedule, minimiser, lanes, seed):
    """The loop's lanes at their initial paths and `step(i, lanes)`, the loop's step of
    every lane, for `minimiser`; also the flat initial paths, R_f's and what lanes share."""
    unknowns = jax.vmap(problem.init)(jr.split(jr.key(seed), lanes))
    y0 = jax.vmap(lambda u: minimiser.flatten(problem, u))(unknowns)
    rf = jnp.asarray(schedule.rf)
    factors = jnp.asarray(schedule.alpha ** np.arange(schedule.n_beta))
    loop_config = LoopConfig(
        schedule.n_beta, (), 1e-10, 1e-9, 5000, minimiser, deepest.NoProgressMeter()
    )
    shared = minimiser.prepare(problem, y0, rf, factors)
    init_lane, step_lane = _lane_functions(problem, rf, loop_config, shared)

    def step(i, lanes_):
        return jax.vmap(lambda lane: step_lane(lane, i)[0])(lanes_)

    return jax.vmap(init_lane)(y0), step, (y0, rf, shared)


def measure(lanes, steps):
    problem, schedule, config = load("L12")
    minimiser = deepest.LBFGS()
    seed = config["anneal"]["seed"]
    lane_state, whole, (y0, rf, shared) = lane_step(problem, schedule, minimiser, lanes, seed)
    plain_state, plain, _ = lane_step(
        problem, schedule, deepest.LBFGS(precondition=False), lanes, seed
    )
    beta = schedule.n_beta // 3

    def fori(body):
        return lambda x: jax.lax.fori_loop(0, steps, body, x)

    def solver_only(i, x):  # the minimiser's step, each lane at its own β (traced)
        y, state = x
        betas = jnp.full((lanes,), beta, jnp.int32)

        def one(y, state, b):
            return minimiser.step(problem, y, rf[b], b, i, state, shared)[:2]

        return jax.vmap(one)(y, state, betas)

    value_and_grad = jax.vmap(
        jax.value_and_grad(lambda y: problem.action(minimiser.unflatten(problem, y), rf[beta]))
    )

    def gradient(i, y):
        return y - 1e-12 * value_and_grad(y)[1]

    pre = shared.preconditioner

    def solves(i, y):
        z = jax.vmap(lambda g: pre.gradient(beta, g))(y)
        return 0.5 * (y + jax.vmap(lambda z: pre.direction(beta, z))(z))

    m, n = minimiser.history_length, y0.shape[1]
    s_mem = jr.normal(jr.key(2), (lanes, m, n), jnp.float32)
    y_mem = jr.normal(jr.key(3), (lanes, m, n), jnp.float32)

    def memory(rows):
        def one(s_mem, y_mem, g):
            if rows:
                s_p = jnp.einsum("mn,kn->mk", s_mem, jnp.stack([g, g]))
                y_p = jnp.einsum("mn,kn->mk", y_mem, jnp.stack([g, g, g]))
            else:
                s_p = s_mem @ jnp.stack([g, g], axis=1)
                y_p = y_mem @ jnp.stack([g, g, g], axis=1)
            w = s_p[:, 0] + y_p[:, 1]
            return w @ s_mem + w @ y_mem

        def body(i, y):
            d = jax.vmap(one)(s_mem, y_mem, y.astype(jnp.float32))
            return 0.5 * y + 1e-9 * d.astype(y.dtype)

        return body

    return [
        ("whole lane step", per_lane_step(fori(whole), lane_state, lanes, steps)),
        (
            "the minimiser's step alone (no loop bookkeeping)",
            per_lane_step(fori(solver_only), (lane_state.y, lane_state.state), lanes, steps),
        ),
        (
            "whole lane step without the preconditioner",
            per_lane_step(fori(plain), plain_state, lanes, steps),
        ),
        ("value-and-gradient", per_lane_step(fori(gradient), y0, lanes, steps)),
        ("preconditioner's two solves", per_lane_step(fori(solves), y0, lanes, steps)),
        (ROWS, per_lane_step(fori(memory(True)), y0, lanes, steps)),
        (
            "memory products, vectors as columns",
            per_lane_step(fori(memory(False)), y0, lanes, steps),
        ),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="4 lanes, 20 steps")
    args = parser.parse_args()
    if args.quick:
        args.lanes, args.steps = [4], 20
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}\n")
    print("| lanes | part | µs per lane and step (CPU time) |")
    print("|---|---|---|")
    floors = []
    for lanes in args.lanes:
        times = dict(measure(lanes, args.steps))
        for name, t in times.items():
            print(f"| {lanes} | {name} | {t:.1f} |")
        vg = times["value-and-gradient"]
        floor = vg + times["preconditioner's two solves"] + times[ROWS]
        floors.append((lanes, vg, floor, times["whole lane step"]))
    # What no rewrite of the bookkeeping removes: one evaluation, the two sequential solves
    # and the two passes over the L-BFGS memories; the rest of a step is what is left.
    print("\n| lanes | VG + solves + memory products (µs) | / VG | whole step / VG |", end="")
    print(" left for the rest of a step within 3× VG (µs) |")
    print("|---|---|---|---|---|")
    for lanes, vg, floor, step in floors:
        rest = 3 * vg - floor
        print(f"| {lanes} | {floor:.1f} | {floor / vg:.2f} | {step / vg:.2f} | {rest:.1f} |")


if __name__ == "__main__":
    main()
