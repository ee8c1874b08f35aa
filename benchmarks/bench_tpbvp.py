"""solve_tpbvp against scipy.integrate.solve_bvp on the same boundary-value problems.

Both solve the canonical equations of the continuous assimilation action (pendulum, fully
observed at both ends; Lorenz-63, components 0 and 2 observed at both ends). Accuracy is
measured against a reference solve (multiple shooting, Tsit5, 8 x 128 steps, error ~1e-13),
as the max error of x and p over 101 times. scipy runs at tol = 1e-5 (with its default
finite-difference Jacobians) and our meshes are chosen so that our error is no larger than
scipy's ("equal accuracy"; both ≈ 1e-7–1e-6). Two of our methods:

- collocation: `deepest.Collocation` (Lobatto IIIA–IIIB, order 4) on a uniform mesh; for
  Lorenz-63 with nested iteration: a 6-node collocation solve (Newton to 1e-2) is the
  fine solve's `guess` (both inside the timed call). Measured on this machine it pays for
  Lorenz-63 (poor default guess: ~10 Newton steps on the fine mesh, 2 after the coarse
  solve) and not for the pendulum (7 steps, cheap).
- multiple shooting: `deepest.MultipleShooting` with Tsit5 at fixed steps.

JAX time excludes compilation (reported separately). Single-problem timings alternate blocks
of JAX calls and scipy calls, so that both see the same load on a shared machine: blocks of 5
calls (each runs warm, as in a loop of solves), and strict alternation of single calls
(after each scipy call XLA's compiled code and thread pool start cold, which costs our
sub-millisecond solves 2-3x). Reported are the ratio of the median times and the ratio of the
minimum times (the least sensitive to other jobs on the machine).
Batched: 64 problems with different data (vmap, one call) against scipy solving them in a
loop; errors over the problems both solved, with the count each solved.

    .venv/bin/python benchmarks/bench_tpbvp.py            # full
    .venv/bin/python benchmarks/bench_tpbvp.py --quick    # smoke
"""

import argparse
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402
import scipy.integrate  # noqa: E402

import deepest  # noqa: E402


class Pendulum(deepest.models.AbstractModel):
    g: jax.Array

    def __call__(self, t, x):
        return jnp.stack([x[1], -self.g * jnp.sin(x[0]) - 0.1 * x[1]])


def pendulum_numpy(y, rf, g=4.0, c=0.1):
    x0, x1, p0, p1 = y
    f = np.stack([x1, -g * np.sin(x0) - c * x1])
    dp = np.stack([g * np.cos(x0) * p1, -p0 + c * p1])
    return np.concatenate([f + np.stack([p0, p1]) / rf, dp])


def lorenz_numpy(y, rf, s=10.0, r=28.0, b=8.0 / 3.0):
    x, p = y[:3], y[3:]
    f = np.stack([s * (x[1] - x[0]), x[0] * (r - x[2]) - x[1], x[0] * x[1] - b * x[2]])
    jt_p = np.stack(
        [
            -s * p[0] + (r - x[2]) * p[1] + x[1] * p[2],
            s * p[0] - p[1] + x[0] * p[2],
            -x[0] * p[1] - b * p[2],
        ]
    )
    return np.concatenate([f + p / rf, -jt_p])


# Newton to 1e-9 (the default is 1e-10): quadratic convergence puts the root far below the
# discretisation error either way, one iteration sooner.
NEWTON = optx.Newton(rtol=1e-9, atol=1e-9, linear_solver=lx.LU())


def collocation(n_nodes, coarse_nodes=None):
    """Collocation on `n_nodes` uniform nodes; with `coarse_nodes`, started from a coarser
    collocation solve (nested iteration).

    The coarse solve only needs to bring Newton's fine-mesh iterations into their fast
    phase, hence its loose Newton tolerance; the fine one stops at 1e-8 (relative step),
    below the ≈ 1e-7 discretisation error.
    """
    fine = deepest.Collocation(n_nodes, newton_tol=1e-8)
    if coarse_nodes is None:
        return lambda problem: deepest.solve_tpbvp(problem, fine, throw=False)
    coarse = deepest.Collocation(coarse_nodes, newton_tol=1e-2)

    def solve(problem):
        start = deepest.solve_tpbvp(problem, coarse, throw=False)
        return deepest.solve_tpbvp(problem, fine, start, throw=False)

    return solve


def shooting(method):
    return lambda problem: deepest.solve_tpbvp(problem, method, throw=False)


PROBLEMS = {
    "pendulum (D=2, T=1)": dict(
        model=Pendulum(jnp.asarray(4.0)),
        times=[0.0, 1.0],
        values=[[1.0, 0.0], [-0.5, 0.3]],
        observed=[0, 1],
        dim=2,
        rm=10.0,
        rf=1.0,
        numpy=pendulum_numpy,
        methods={
            "collocation, 33 nodes": collocation(33),
            "multiple shooting, 2 × 16 Tsit5 steps": shooting(
                deepest.MultipleShooting(2, steps_per_segment=16, root_finder=NEWTON)
            ),
        },
        scipy_tol=1e-5,
    ),
    "Lorenz-63 (D=3, T=0.3, 2 observed)": dict(
        model=deepest.models.Lorenz63(),
        times=[0.0, 0.3],
        values=[[1.0, 20.0], [0.0, 22.0]],
        observed=[0, 2],
        dim=3,
        rm=20.0,
        rf=1.0,
        numpy=lorenz_numpy,
        methods={
            "collocation, 61 nodes (from 6)": collocation(61, 6),
            "multiple shooting, 4 × 16 Tsit5 steps": shooting(
                deepest.MultipleShooting(4, steps_per_segment=16, root_finder=NEWTON)
            ),
        },
        scipy_tol=1e-5,
    ),
}


def scipy_solve(spec, values, tol):
    d, observed, rm, rf = spec["dim"], spec["observed"], spec["rm"], spec["rf"]
    times = spec["times"]
    w = np.zeros((2, d))
    w[:, observed] = 1.0
    yv = np.zeros((2, d))
    yv[:, observed] = values

    def bc(a, b):
        return np.concatenate(
            [a[d:] - rm * w[0] * (a[:d] - yv[0]), b[d:] + rm * w[1] * (b[:d] - yv[1])]
        )

    mesh = np.linspace(times[0], times[1], 11)
    guess = np.zeros((2 * d, mesh.size))
    for j, i in enumerate(observed):
        guess[i] = np.interp(mesh, times, np.asarray(values)[:, j])
    sol = scipy.integrate.solve_bvp(
        lambda t, y: spec["numpy"](y, rf), bc, mesh, guess, tol=tol, max_nodes=100_000
    )
    return sol


def interleaved_times(fn_a, fn_b, rounds, block):
    """Per-call times of two functions, run in alternating blocks of `block` calls each.

    Both see the same machine load (the blocks alternate), and each runs warm, as in a loop
    of solves. With `block=1` every call follows a call of the other function: XLA's
    compiled code and thread pool then start cold on each call (see BENCHMARKS.md).
    """
    times_a, times_b = [], []
    for _ in range(rounds):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            for _ in range(block):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
    return times_a, times_b


def batch_times(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def max_error(x, p, ref_x, ref_p, mask=None):
    ex = jnp.abs(x - ref_x)
    ep = jnp.abs(p - ref_p)
    if mask is not None:
        ex = jnp.where(mask[:, None, None], ex, 0)
        ep = jnp.where(mask[:, None, None], ep, 0)
    return max(float(jnp.max(ex)), float(jnp.max(ep)))


def run_problem(name, spec, repeats, batch, rng, reference_solve):
    data = deepest.Observations(spec["times"], spec["values"], spec["observed"])
    problem = deepest.ContinuousAssimilation(
        spec["model"], data, spec["rm"], spec["rf"], dim=spec["dim"]
    )
    with_values = lambda v: eqx.tree_at(lambda p: p.values, problem, v)
    ts = jnp.linspace(spec["times"][0], spec["times"][1], 101)

    def solve_one(v, solve):
        sol = solve(with_values(v))
        x, p = jax.vmap(sol.evaluate)(ts)
        return x, p, sol.converged

    d = spec["dim"]
    values = jnp.asarray(spec["values"])
    ref_x, ref_p, _ = jax.jit(lambda v: solve_one(v, reference_solve))(values)
    # A batch of problems: the end data perturbed.
    batch_values = values[None] + jnp.asarray(
        np.concatenate(
            [
                np.zeros((batch, 1, values.shape[1])),
                0.2 * rng.standard_normal((batch, 1, values.shape[1])),
            ],
            axis=1,
        )
    )
    ref_batch = jax.jit(jax.vmap(lambda v: solve_one(v, reference_solve)))(batch_values)

    # scipy, single and batched (solved one after another).
    s = scipy_solve(spec, np.asarray(values), spec["scipy_tol"])
    y = s.sol(np.asarray(ts))
    err_scipy = max_error(y[:d].T, y[d:].T, ref_x, ref_p)
    start = time.perf_counter()
    sols = [scipy_solve(spec, np.asarray(v), spec["scipy_tol"]) for v in batch_values]
    t_scipy_batch = time.perf_counter() - start
    scipy_ok = np.array([s_i.status == 0 for s_i in sols])
    scipy_batch = np.stack([s_i.sol(np.asarray(ts)) for s_i in sols])  # (batch, 2d, 101)

    rows = []
    for method_name, solve in spec["methods"].items():
        fn = jax.jit(lambda v, solve=solve: solve_one(v, solve))
        start = time.perf_counter()
        compiled = fn.lower(values).compile()
        compile_single = time.perf_counter() - start
        x, p, ok = compiled(values)
        assert bool(ok)
        err_jax = max_error(x, p, ref_x, ref_p)
        run_jax = lambda c=compiled: jax.block_until_ready(c(values))  # noqa: E731
        run_scipy = lambda: scipy_solve(spec, np.asarray(values), spec["scipy_tol"])  # noqa: E731
        warm = interleaved_times(run_jax, run_scipy, repeats, block=5)
        cold = interleaved_times(run_jax, run_scipy, repeats, block=1)

        fn_batch = jax.jit(jax.vmap(lambda v, solve=solve: solve_one(v, solve)))
        start = time.perf_counter()
        compiled_batch = fn_batch.lower(batch_values).compile()
        compile_batch = time.perf_counter() - start
        t_jax_batch = batch_times(
            lambda c=compiled_batch: jax.block_until_ready(c(batch_values)), max(1, repeats // 4)
        )
        xb, pb, okb = compiled_batch(batch_values)
        both = np.asarray(okb & ref_batch[2]) & scipy_ok
        err_jax_batch = max_error(xb, pb, ref_batch[0], ref_batch[1], jnp.asarray(both))
        err_scipy_batch = max_error(
            jnp.swapaxes(scipy_batch[:, :d], 1, 2),
            jnp.swapaxes(scipy_batch[:, d:], 1, 2),
            ref_batch[0],
            ref_batch[1],
            jnp.asarray(both),
        )
        for case, (times_jax, times_scipy) in (
            ("single (warm: blocks of 5)", warm),
            ("single (cold: strict alternation)", cold),
        ):
            rows.append(
                (
                    name,
                    method_name,
                    case,
                    times_jax,
                    compile_single,
                    err_jax,
                    "1/1",
                    times_scipy,
                    err_scipy,
                    "1/1" if s.status == 0 else "0/1",
                )
            )
        rows.append(
            (
                name,
                method_name,
                f"batch of {batch}",
                t_jax_batch,
                compile_batch,
                err_jax_batch,
                f"{int(jnp.sum(okb))}/{batch}",
                [t_scipy_batch],
                err_scipy_batch,
                f"{int(scipy_ok.sum())}/{batch}",
            )
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, small batch")
    args = parser.parse_args()
    repeats = 3 if args.quick else 20
    batch = 8 if args.quick else 64
    rng = np.random.default_rng(0)
    reference = shooting(deepest.MultipleShooting(8, steps_per_segment=128))
    rows = []
    for name, spec in PROBLEMS.items():
        rows += run_problem(name, spec, repeats, batch, rng, reference)

    print(f"jax {jax.__version__}, devices {jax.devices()}, repeats {repeats}\n")
    print(
        "| problem | method | case | solve_tpbvp time | compile | error | converged | "
        "scipy solve_bvp time | scipy error | scipy converged | speed-up (medians) | "
        "speed-up (minima) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, method, case, tj, tc, ej, cj, ts_, es, cs in rows:
        mj, ms = statistics.median(tj), statistics.median(ts_)
        print(
            f"| {name} | {method} | {case} | {mj * 1e3:.2f} ms | {tc:.1f} s | {ej:.1e} | {cj} | "
            f"{ms * 1e3:.1f} ms | {es:.1e} | {cs} | {ms / mj:.1f}x | {min(ts_) / min(tj):.1f}x |"
        )


if __name__ == "__main__":
    main()
