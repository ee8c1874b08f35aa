"""Batched annealing (deepest.anneal) against the serial varanneal-style baseline.

Both anneal the same Lorenz-96 twin experiment (the shipped configs) from the same initial
paths, with the same action, data and schedule; the baseline is scipy's L-BFGS-B with
gtol = ftol = 1e-8, one path after another, warm start across β, gradients from a jitted
`jax.value_and_grad`. Compile time is excluded from both clocks and reported apart.

The serial baseline's time per path does not depend on how many paths there are, so it
is measured on the first `--serial-paths` paths; deepest runs 16, 64 and 256 paths.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_anneal.py [--quick] [--sizes 16 64 256]
        [--serial-paths 16] [--configs L12 L8] [--minimisers lbfgs lbfgs64 optax lm]
        [--history 10] [--sharded-sizes 64] [--small-sizes 16 64] [--polish-paths 4]

The CPU is split into one XLA device per core. Every row runs on one core, as the serial
baseline does, except the "N cores" rows (`--sharded-sizes`), where `deepest.anneal`
shards the paths over all of them.

Four of deepest's minimisers run: the compact, preconditioned L-BFGS (the default), the
same with its memory in float64 instead of float32, the earlier L-BFGS with optax's
two-loop directions (`OptaxLBFGS`, `optax_lbfgs.py`; it was `LBFGS(compact=False)`), and
the block-banded Levenberg–Marquardt.
The last three run at `--small-sizes` only. For each
minimiser the first `--polish-paths` paths are annealed again with every β saved (the
timed runs save none: saved points are loop state) and polished at every β with scipy's
L-BFGS-B (gtol 1e-13, ftol 1e-15) from the reported points: the worst relative drop is the
"polish gap" (a level that is a minimum has a gap ≤ 1e-6). The evaluations per β are
reported with and without carried curvature (`LBFGS(carry_curvature=True)`;
`--skip-per-beta` leaves them out).

The "one core" rows are one XLA device; XLA may still spread a large operation over the
machine's other cores, which the serial baseline cannot use: run the script under
`taskset -c 0` for rows that are one core's.

A "floor" row times the vmapped value-and-gradient alone (64 paths, a
compiled loop, no optimiser) and multiplies it by the serial baseline's evaluations: no
method that needs as many evaluations can beat it on this machine. The last column is the
time per path and step (one evaluation each): the serial baseline's per evaluation, the
floor's per vmapped value-and-gradient, deepest's per lane and loop step.
"""

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # unpinned OpenBLAS slows scipy up to 20x
import platform
import sys
import time

# One XLA CPU device per core, so that the "all cores" rows can shard the paths over them
# (the other rows run on one device, i.e. one core, as the serial baseline does).
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={os.cpu_count()}")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.flatten_util  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import deepest  # noqa: E402
import deepest.experiments  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from optax_lbfgs import OptaxLBFGS  # noqa: E402
from serial_baseline import serial_anneal  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    config = deepest.experiments.load(os.path.join(ROOT, "configs", f"lorenz96_{name}.yaml"))
    problem, schedule, data, _ = config.build()
    return problem, schedule, config


def gradient_cost(problem, schedule, init, y, n_evals=300):
    """Seconds per path and evaluation of a vmapped value-and-gradient of the action, in
    a compiled loop (no optimiser), after a warm-up."""
    _, unravel = jax.flatten_util.ravel_pytree(jax.tree.map(lambda a: a[0], init))
    rf = jnp.asarray(schedule.rf[-1])
    value_and_grad = jax.vmap(jax.value_and_grad(lambda y: problem.action(unravel(y), rf)))

    @jax.jit
    def loop(y):
        def body(_, y):
            _, g = value_and_grad(y)
            return y - 1e-9 * g

        return jax.lax.fori_loop(0, n_evals, body, y)

    jax.block_until_ready(loop(y))
    start = time.perf_counter()
    jax.block_until_ready(loop(y))
    return (time.perf_counter() - start) / (n_evals * y.shape[0])


def polish_gap(problem, result, n_paths):
    """The worst (A_reported − A_polished)/|A_polished| over every β and the first
    `n_paths` converged paths, after scipy L-BFGS-B (gtol 1e-13, ftol 1e-15)."""
    import scipy.optimize

    _, unravel = jax.flatten_util.ravel_pytree(jax.tree.map(lambda a: a[0], result.unknowns))
    value_and_grad = jax.jit(jax.value_and_grad(lambda y, rf: problem.action(unravel(y), rf)))

    def fg(y, rf):
        f, g = value_and_grad(y, rf)
        return float(f), np.asarray(g)

    worst = 0.0
    for b, saved in result.saved.items():
        rf = jnp.asarray(result.rf[b])
        for p in range(min(n_paths, result.n_paths)):
            if not result.converged[b, p]:
                continue
            y = np.asarray(
                jax.flatten_util.ravel_pytree(jax.tree.map(lambda a, p=p: a[p], saved))[0]
            )
            opts = {"gtol": 1e-13, "ftol": 1e-15, "maxiter": 20000, "maxfun": 40000}
            res = scipy.optimize.minimize(
                fg, y, args=(rf,), jac=True, method="L-BFGS-B", options=opts
            )
            worst = max(worst, (fg(y, rf)[0] - res.fun) / abs(res.fun))
    return worst


def per_path_table(name, sizes):
    """Time per path against paths on one core: `deepest.anneal` as it runs by default
    (groups of lanes sized to the cache) at every size, and as one program of every lane
    (`group_size=n`) at 64 and 256 paths, from the same initial paths."""
    problem, schedule, config = load(name)
    key = jr.key(config["anneal"]["seed"])
    init = jax.vmap(problem.init)(jr.split(key, max(sizes)))
    one_core = jax.devices()[:1]
    rows = []
    for n in sizes:
        u = jax.tree.map(lambda a, n=n: a[:n], init)
        for group in [None] + ([n] if n in (64, 256) else []):
            r = deepest.anneal(
                problem,
                schedule,
                n,
                key,
                init=u,
                progress=False,
                devices=one_core,
                group_size=group,
            )
            label = "one program" if group else "default"
            rows.append((n, label, r.stats["lanes_per_group"], r.stats["run_time"] / n))
    best = min(t for _, label, _, t in rows if label == "default")
    print()
    print(f"{name}: time per path against paths, one core")
    print()
    print("| paths | lanes | lanes per group | s per path | against the best |")
    print("|---|---|---|---|---|")
    for n, label, group, t in rows:
        print(f"| {n} | {label} | {group} | {t:.4f} | {t / best:.2f} |")


def lowest_fraction(final, lowest, tol=0.05):
    return float(np.mean(final <= (1 + tol) * lowest))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--serial-paths", type=int, default=16)
    parser.add_argument("--configs", nargs="+", default=["L12", "L8"])
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--minimisers", nargs="+", default=["lbfgs", "lbfgs64", "optax", "lm"])
    parser.add_argument("--small-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--polish-paths", type=int, default=4)
    parser.add_argument(
        "--per-path-sizes",
        type=int,
        nargs="*",
        default=[1, 4, 16, 64, 256, 1024],
        help="paths at which the first config's time per path is measured (default groups, "
        "and one program of every path at 64 and 256)",
    )
    parser.add_argument("--quick", action="store_true", help="L12, 16 paths, L-BFGS and LM")
    parser.add_argument(
        "--skip-per-beta",
        action="store_true",
        help="leave out the evaluations per β with and without carried curvature (long on L8)",
    )
    parser.add_argument(
        "--sharded-sizes",
        type=int,
        nargs="*",
        default=[64],
        help="sizes also run with the paths sharded over every core (one device per core)",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.small_sizes, args.configs = [16], [16], ["L12"]
        args.sharded_sizes, args.serial_paths, args.polish_paths = [], 1, 0
        args.minimisers = ["lbfgs", "lm"]
        args.per_path_sizes = [4, 16]
    minimisers = {
        "lbfgs": (
            "deepest.anneal, L-BFGS" + (f", history {args.history}" if args.history != 10 else ""),
            deepest.LBFGS(history_length=args.history),
        ),
        "lbfgs64": (
            "deepest.anneal, L-BFGS, float64 memory",
            deepest.LBFGS(history_length=args.history, memory_dtype="float64"),
        ),
        "optax": ("deepest.anneal, L-BFGS two-loop (optax)", OptaxLBFGS()),
        "lm": ("deepest.anneal, banded LM", deepest.LevenbergMarquardt()),
    }
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"devices {jax.devices()}, jax {jax.__version__}\n"
    )
    rows, lanes, gaps, per_beta = [], [], [], []
    for name in args.configs:
        problem, schedule, config = load(name)
        key = jr.key(config["anneal"]["seed"])
        n_max = max(args.sizes + args.small_sizes + [args.serial_paths])
        init = jax.vmap(problem.init)(jr.split(key, n_max))
        sub = jax.tree.map(lambda a: a[: args.serial_paths], init)
        serial = serial_anneal(problem, schedule, sub)
        s_final = serial["action"][-1]
        results = {}
        one_core, all_cores = jax.devices()[:1], jax.devices()
        for m in args.minimisers:
            sizes = args.sizes if m == "lbfgs" else args.small_sizes
            runs = [(n, one_core) for n in sizes]
            if len(all_cores) > 1 and m == "lbfgs":
                runs += [(n, all_cores) for n in args.sharded_sizes]
            for n, devices in runs:
                u = jax.tree.map(lambda a, n=n: a[:n], init)
                results[m, n, len(devices)] = deepest.anneal(
                    problem,
                    schedule,
                    n,
                    key,
                    init=u,
                    progress=False,
                    minimiser=minimisers[m][1],
                    devices=devices,
                )
        # A floor for any method that spends as many evaluations as L-BFGS does: the
        # vmapped value-and-gradient alone, in a compiled loop, at 64 paths.
        n_floor = 64
        y = jax.vmap(lambda u: jax.flatten_util.ravel_pytree(u)[0])(
            jax.tree.map(lambda a, n=n_floor: a[:n], init)
        )
        per_eval = gradient_cost(problem, schedule, init, y)
        lowest = min([np.nanmin(s_final)] + [np.nanmin(r.action[-1]) for r in results.values()])
        s_time = serial["run_time"] / args.serial_paths
        rows.append(
            (
                name,
                "serial scipy L-BFGS-B",
                args.serial_paths,
                s_time,
                1.0,
                serial["iterations"].sum(0).mean(),
                lowest_fraction(s_final, lowest),
                serial["compile_time"],
                1e6 * s_time / serial["iterations"].sum(0).mean(),
                float("nan"),
                float("nan"),
            )
        )
        for (m, n, n_dev), r in results.items():
            method = minimisers[m][0] + (f", {n_dev} cores" if n_dev > 1 else "")
            t = r.stats["run_time"] / n
            it = r.iterations.sum(0).mean()
            util = r.stats["lane_steps"] / (r.stats["loop_steps"] * n)
            rows.append(
                (
                    name,
                    method,
                    n,
                    t,
                    s_time / t,
                    it,
                    lowest_fraction(r.action[-1], lowest),
                    r.stats["compile_time"],
                    1e6 * r.stats["run_time"] / (r.stats["loop_steps"] * n),
                    # per evaluation (a lane's step at a β not yet finished), against the
                    # vmapped value-and-gradient's
                    1e6 * r.stats["run_time"] / r.stats["lane_steps"],
                    r.stats["run_time"] / r.stats["lane_steps"] / per_eval,
                )
            )
            # What a loop that waits at every β for its slowest path would have run.
            synchronous = int(r.iterations.max(axis=1).sum())
            lanes.append(
                (
                    name,
                    method,
                    n,
                    r.stats["loop_steps"],
                    synchronous,
                    util,
                    r.stats["lane_steps"] / (synchronous * n),
                )
            )
        rows.append(
            (
                name,
                "floor: serial's evaluations x vmapped value-and-grad alone",
                n_floor,
                per_eval * serial["iterations"].sum(0).mean(),
                s_time / (per_eval * serial["iterations"].sum(0).mean()),
                serial["iterations"].sum(0).mean(),
                float("nan"),
                float("nan"),
                1e6 * per_eval,
                1e6 * per_eval,
                1.0,
            )
        )
        if args.polish_paths:
            # The first paths again, every β saved (not in the timed runs: saved rows are
            # loop state), each level polished.
            u = jax.tree.map(lambda a: a[: args.polish_paths], init)
            for m in args.minimisers:
                r = deepest.anneal(
                    problem,
                    schedule,
                    args.polish_paths,
                    key,
                    init=u,
                    progress=False,
                    minimiser=minimisers[m][1],
                    devices=one_core,
                    save_betas=range(schedule.n_beta),
                )
                gaps.append((name, minimisers[m][0], polish_gap(problem, r, args.polish_paths)))
        # evaluations per β with and without carried curvature, same paths
        n_carry = min(args.sizes)
        u = jax.tree.map(lambda a, n=n_carry: a[:n], init)
        for label, m in (
            ()
            if args.skip_per_beta
            else (
                ("cold start (default)", deepest.LBFGS(history_length=args.history)),
                (
                    "carried curvature",
                    deepest.LBFGS(history_length=args.history, carry_curvature=True),
                ),
                ("cold start, no preconditioner", deepest.LBFGS(precondition=False)),
            )
        ):
            r = deepest.anneal(
                problem,
                schedule,
                n_carry,
                key,
                init=u,
                progress=False,
                minimiser=m,
                devices=one_core,
            )
            per_beta.append((name, label, r.iterations.mean(axis=1), r.action[-1]))
        # same initial paths: the per-path minima agree where both converge alike
        for m in args.minimisers:
            r16 = results[m, min(n for mm, n, _ in results if mm == m), 1]
            k = min(args.serial_paths, r16.n_paths)
            agree = np.mean(np.isclose(r16.action[-1, :k], s_final[:k], rtol=1e-3))
            print(
                f"{name}: lowest final action {lowest:.6g}; {minimisers[m][0]} and serial reach "
                f"the same final action (to 1e-3) on {agree:.0%} of the shared initial paths"
            )
    print()
    print(
        "| config | method | paths | time per path (s) | speed-up vs serial | "
        "evaluations per path | fraction at lowest level (5%) | compile (s) | "
        "µs per path and step | µs per evaluation | evaluation / value-and-grad |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        name, method, n, t, speed, it, frac, comp, step, per, ratio = row
        print(
            f"| {name} | {method} | {n} | {t:.3f} | {speed:.1f}x | {it:.0f} | {frac:.2f} | "
            f"{comp:.1f} | {step:.0f} | {per:.0f} | {ratio:.1f}x |"
        )
    if args.per_path_sizes:
        per_path_table(args.configs[0], args.per_path_sizes)
    print()
    print("| config | method | worst polish gap (every β, converged paths) |")
    print("|---|---|---|")
    for name, method, gap in gaps:
        print(f"| {name} | {method} | {gap:.1e} |")
    print()
    print("| config | L-BFGS | evaluations per path | evaluations per β (mean over paths) |")
    print("|---|---|---|---|")
    for name, label, it, _ in per_beta:
        print(f"| {name} | {label} | {it.sum():.0f} | {' '.join(f'{v:.0f}' for v in it)} |")
    for name in args.configs if per_beta else ():
        finals = {label: final for n_, label, _, final in per_beta if n_ == name}
        cold, warm = finals["cold start (default)"], finals["carried curvature"]
        print(
            f"{name}: carried curvature's final levels against the cold start's: largest "
            f"relative difference {np.max(np.abs(warm / cold - 1)):.1e}"
        )
    print()
    print(
        "| config | method | paths | loop steps (each path its own β) | loop steps if each β "
        "waited for its slowest path | lanes busy | lanes busy if synchronous |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, method, n, steps, synchronous, util, sync_util in lanes:
        print(
            f"| {name} | {method} | {n} | {steps} | {synchronous} | {util:.0%} | {sync_util:.0%} |"
        )


if __name__ == "__main__":
    main()
