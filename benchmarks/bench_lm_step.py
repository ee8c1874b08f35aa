"""Where one Levenberg–Marquardt step goes, and at how many GFLOP/s, per path.

On the L = 12 Lorenz-96 config (trapezoid, N = 161 times, D = 20, one estimated
parameter) with the paths vmapped (64 lanes by default), each part compiled on its own,
warmed up, and timed as the minimum over `--repeats` runs of `--calls`
calls each (a step: of a compiled loop of `--steps` steps, as the annealing loop runs them):

- (a) `_blocks`: the residuals, their linearisation and the 2D + p Jacobian-vector
  products of the two-colour probing, sorted into per-time blocks;
- (b) the normal blocks JᵀJ, Jᵀr from those blocks (`banded_normal_equations` fed the
  blocks as arrays); `banded_normal_equations` with its `_blocks` in one program is
  printed too ("(a) + (b) fused"): XLA fuses across the two, and not always for the better;
- (c) `solve_block_tridiagonal` on the damped blocks;
- (d) one whole step of the optimistix solver as `deepest.anneal` runs it (`solver.step`
  of `LevenbergMarquardt().solver_and_fn`, vmapped, in a compiled loop of steps).

FLOPs per path are counted analytically (dense block products, no credit for the zeros in
them), with n = N times, d = D, p parameters, q node-residual columns, k interval-residual
columns, w = 2d + p probes:

- (a) w · [n·6d + (n−1)·5d + n·2q] (a Lorenz-96 field is 4 flops a component, its tangent
  6; a trapezoid interval 5 a component; a node residual 2), plus the residual itself;
- (b) 2d²·(nq + 3(n−1)k) (diagonal and off-diagonal blocks) + 2dp·(nq + 2(n−1)k) (border)
  + 2p²·(nq + (n−1)k) (corner) + 2d·(nq + 2(n−1)k) + 2p·(nq + (n−1)k) (gradient);
- (c) per time 2d³ + 2d²(1+p) (Schur block and right-hand side), 2d²(2d+1+p) (Gauss–Jordan
  sweep of [S | O | rhs], as implemented), 2d²(1+p) (back substitution); then the
  parameters' Schur complement 2nd(p² + p) + p-sized sweep. The same count is used for
  every version, so GFLOP/s compare work done per second (the current sweep drops
  eliminated columns and does ≈ 25% fewer flops than it is credited with);
- (d) (a) + (b) + (c); XLA's own count (`cost_analysis`) is printed beside it.

    python benchmarks/bench_lm_step.py [--quick] [--lanes 64] [--baseline HEAD]

`--baseline REV` also times `deepest/_levenberg_marquardt.py` as it is at git revision REV,
for a before/after table. Run on one core as the other benchmarks do, e.g.
`OPENBLAS_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_lm_step.py --baseline HEAD`.
"""

import argparse
import importlib.util
import inspect
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402

import deepest  # noqa: E402

# The module of the current LevenbergMarquardt, whose private parts (the descent and the
# Jacobian blocks) this benchmark measures, as it does a baseline revision's file.
current = sys.modules[deepest.LevenbergMarquardt.__module__]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_anneal import load  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Where the Levenberg–Marquardt module has lived, newest first, with its package (for its
# relative imports).
_LM_FILES = (
    ("deepest/_annealing/_minimiser/_levenberg_marquardt.py", "deepest._annealing._minimiser"),
    ("deepest/_levenberg_marquardt.py", "deepest"),
)


def module_at(rev):
    """The Levenberg–Marquardt module at git revision `rev`, imported inside `deepest`."""
    shown = {
        package: subprocess.run(
            ["git", "show", f"{rev}:{file}"], cwd=ROOT, capture_output=True, text=True
        )
        for file, package in _LM_FILES
    }
    found = [(package, s.stdout) for package, s in shown.items() if s.returncode == 0]
    if not found:
        raise FileNotFoundError(f"No Levenberg–Marquardt module at revision {rev}.")
    package, source = found[0]
    path = os.path.join(tempfile.mkdtemp(), "_lm_baseline.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"{package}._lm_baseline", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = package
    spec.loader.exec_module(module)
    return module


def solver_and_fn(minimiser, problem, y0):
    """The optimistix solver and residual function (across versions of its signature)."""
    for name in ("_solver_and_fn", "solver_and_fn"):
        method = getattr(minimiser, name, None)
        if method is not None:
            takes_y = len(inspect.signature(method).parameters) > 1
            return method(problem, y0) if takes_y else method(problem)
    raise AttributeError("LevenbergMarquardt has no solver_and_fn")


def flops(n, d, p, q, k):
    w = 2 * d + p
    residual = n * 4 * d + (n - 1) * 5 * d + n * 2 * q
    blocks = residual + w * (n * 6 * d + (n - 1) * 5 * d + n * 2 * q)
    rows = n * q + (n - 1) * k
    normal = (
        2 * d * d * (n * q + 3 * (n - 1) * k)
        + 2 * d * p * (n * q + 2 * (n - 1) * k)
        + 2 * p * p * rows
        + 2 * d * (n * q + 2 * (n - 1) * k)
        + 2 * p * rows
    )
    per_time = 2 * d**3 + 2 * d * d * (1 + p) + 2 * d * d * (2 * d + 1 + p) + 2 * d * d * (1 + p)
    solve = n * per_time + 2 * n * d * (p * p + p) + 2 * p * p * (p + 1) + 2 * n * d * p
    return {"blocks": blocks, "normal": normal, "solve": solve}


def timed(fn, args, calls, repeats, loop=None):
    """Minimum over `repeats` of the seconds per call of `calls` calls (compiled, warm).

    A part is timed as a program of its own, its results the program's outputs: feeding
    them to any consumer inside one program (even a sum) changes what XLA fuses, and
    `optimization_barrier` does not stop that on CPU. So a part's time includes writing
    its outputs to fresh buffers. A step is timed as `loop`, a compiled loop of `calls`
    steps, each from the last, as the annealing loop runs them."""
    fn = loop or jax.jit(fn)
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(1 if loop else calls):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def xla_flops(fn, args):
    try:
        cost = fn.lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost.get("flops", float("nan")))
    except Exception:  # noqa: BLE001 (only informative)
        return float("nan")


def measure(lm, problem, y, rf, args):
    """Seconds per lane of each part, and XLA's flop counts per lane."""
    lanes = y.shape[0]
    n, d, p = problem.banded_shape
    # The optimistix solver of the current `LevenbergMarquardt`, with the descent (the
    # blocks, normal equations and solve) of the version measured.
    minimiser = deepest.LevenbergMarquardt()
    solver, fn = solver_and_fn(minimiser, problem, y[0])
    solver = eqx.tree_at(
        lambda s: s.descent, solver, lm._BandedDampedNewton(n, d, p, minimiser.damping)
    )

    def linearised(y):
        residual, linear, _ = jax.linearize(lambda y: fn(y, rf), y, has_aux=True)

        class Jacobian:
            mv = staticmethod(linear)

        return residual, Jacobian

    blocks = jax.jit(jax.vmap(lambda y: lm._blocks(linearised(y)[1], n, d, p, y.dtype)))
    # the normal equations under their name of each version
    normal_equations = getattr(lm, "banded_normal_equations", None) or lm._normal
    normal = jax.jit(jax.vmap(lambda y: normal_equations(*linearised(y)[::-1], n, d, p, y.dtype)))
    state = normal(y)

    def from_blocks(blocks, residual):  # the normal equations on Jacobian blocks as arrays
        saved = lm._blocks
        lm._blocks = lambda *_: blocks
        try:
            return normal_equations(None, residual, n, d, p, y.dtype)
        finally:
            lm._blocks = saved

    jac_blocks = blocks(y)
    residuals = jax.jit(jax.vmap(lambda y: linearised(y)[0]))(y)

    def damped(state):
        lam = 1e-3
        diag_s = jnp.diagonal(state.diagonal, axis1=1, axis2=2)
        diagonal = state.diagonal + lam * jax.vmap(jnp.diag)(diag_s)
        corner = state.corner + lam * jnp.diag(jnp.diagonal(state.corner))
        grad_s, grad_p = state.grad[: n * d].reshape(n, d), state.grad[n * d :]
        return diagonal, state.off, state.border, corner, -grad_s, -grad_p

    system = jax.jit(jax.vmap(damped))(state)
    solve = jax.jit(jax.vmap(lm.solve_block_tridiagonal))

    f_struct, aux_struct = jax.eval_shape(fn, y[0], rf)
    # As `deepest.anneal` does: the state holds a jaxpr, so only its arrays are carried.
    states, static = eqx.partition(
        eqx.filter_vmap(lambda y: solver.init(fn, y, rf, {}, f_struct, aux_struct, frozenset()))(y),
        eqx.is_array,
    )

    def step(y, states):
        def one(y, state):
            y, state, _ = solver.step(fn, y, rf, {}, state, frozenset())
            return y, state

        y, states = eqx.filter_vmap(one)(y, eqx.combine(states, static))
        return y, eqx.filter(states, eqx.is_array)

    def steps(y, states):  # as the annealing loop runs them: each from the last
        return jax.lax.fori_loop(0, args.steps, lambda _, c: step(*c), (y, states))

    # a few steps in, so that the trust region has settled
    y1, states1 = jax.jit(lambda y, s: jax.lax.fori_loop(0, 3, lambda _, c: step(*c), (y, s)))(
        y, states
    )
    step_once = jax.jit(step)
    out = {
        "blocks": timed(blocks, (y,), args.calls, args.repeats) / lanes,
        "normal": timed(jax.vmap(from_blocks), (jac_blocks, residuals), args.calls, args.repeats)
        / lanes,
        "normal+blocks": timed(normal, (y,), args.calls, args.repeats) / lanes,
        "solve": timed(solve, system, args.calls, args.repeats) / lanes,
        "step": timed(None, (y1, states1), args.steps, args.repeats, jax.jit(steps)) / lanes,
    }
    xla = {
        "blocks": xla_flops(blocks, (y,)) / lanes,
        "normal": xla_flops(jax.jit(jax.vmap(from_blocks)), (jac_blocks, residuals)) / lanes,
        "solve": xla_flops(solve, system) / lanes,
        "step": xla_flops(step_once, (y1, states1)) / lanes,
    }
    return out, xla


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="8 lanes, fewer repeats")
    parser.add_argument("--lanes", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="LM steps per timed loop")
    parser.add_argument("--baseline", default=None, help="git revision to compare against")
    args = parser.parse_args()
    if args.quick:
        args.lanes, args.repeats, args.calls, args.steps = 8, 2, 2, 3
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}")
    print(f"XLA devices: {jax.devices()}; lanes: {args.lanes}\n")
    problem, schedule, config = load("L12")
    n, d, p = problem.banded_shape
    minimiser = deepest.LevenbergMarquardt()
    keys = jr.split(jr.key(config["anneal"]["seed"]), args.lanes)
    y = jax.vmap(lambda k: minimiser.flatten(problem, problem.init(k)))(keys)
    rf = jnp.asarray(schedule.rf[len(schedule.rf) // 2])
    node, interval = jax.eval_shape(
        lambda y: problem.banded_residuals(*minimiser._split(problem, y), rf), y[0]
    )
    q, k = node.shape[1], interval.shape[1]
    count = flops(n, d, p, q, k)
    count["normal+blocks"] = count["blocks"] + count["normal"]
    count["step"] = count["normal+blocks"] + count["solve"]
    print(f"n = {n}, d = {d}, p = {p}, q = {q}, k = {k}")
    versions = {"current": current}
    if args.baseline:
        versions = {f"at {args.baseline}": module_at(args.baseline), **versions}
    results = {name: measure(lm, problem, y, rf, args) for name, lm in versions.items()}
    names = {
        "blocks": "(a) residual + JVP colouring (`_blocks`)",
        "normal": "(b) normal blocks from the Jacobian blocks (`_normal`)",
        "normal+blocks": "(a) + (b) in one program",
        "solve": "(c) `solve_block_tridiagonal`",
        "step": "(d) whole LM step (`solver.step`)",
    }
    header = "| part | MFLOP/path (analytic; XLA) |"
    rule = "|---|---|"
    for name in results:
        header += f" {name}: µs/path | GFLOP/s |"
        rule += "---|---|"
    print("\n" + header + "\n" + rule)
    for part, label in names.items():
        xla = results["current"][1].get(part, float("nan"))
        row = f"| {label} | {count[part] / 1e6:.2f}; {xla / 1e6:.2f} |"
        for times, _ in results.values():
            t = times[part]
            row += f" {t * 1e6:.0f} | {count[part] / t / 1e9:.2f} |"
        print(row)


if __name__ == "__main__":
    main()
