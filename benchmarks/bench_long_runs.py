"""What surviving a long run costs: the chunked loop, checkpoints, and Ctrl-C.

1. Chunk overhead: `deepest.anneal` runs its loop in chunks of about 0.25 s, returning to
   the host between them (`deepest.annealing.advance_loop`). Its annealing time is timed
   against the same loop as one program (`deepest.annealing.anneal_lanes`, no chunks), on
   the same inputs, compile excluded; best of `--repeats`. Both give the same records
   (checked bit for bit).
2. Checkpoint write: `deepest.annealing.save_checkpoint` (atomic: write, fsync, rename) of
   the loop state at 256 paths on the shipped L = 12 problem: time (median of 5) and size.
3. Ctrl-C: `deepest anneal` of the shipped L = 12 config in a subprocess gets SIGINT once
   its first checkpoint is on disk; the time from the signal to the process's exit (the
   partial result and its summary written and published).
4. Sweep: `deepest.sweep` of `--settings` points × `--sweep-paths` paths (the L = 12
   problem with as many twin data sets, seeds 0, 1, …, and rf0 alternating 1e-6 and
   1e-5), one index, checkpoint and resume for all (on a CPU its settings run one after
   another through the program of one problem, in groups of lanes sized to the cache),
   against the same points annealed by as many `deepest.anneal` calls one after another
   in this process (whose compiled loop is reused from the second call on). Both clocks
   include everything from the built problems to the results, compile included (each
   starts with every compiled program dropped); the records are compared bit for bit.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_long_runs.py [--quick] [--paths 64]
        [--repeats 3] [--settings 16] [--sweep-paths 64] [--skip PART ...]
"""

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

import deepest  # noqa: E402
from deepest.annealing import (  # noqa: E402
    LoopConfig,
    advance_loop,
    anneal_lanes,
    init_loop,
    loop_records,
    save_checkpoint,
)
from deepest.experiments import resolve  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, **anneal):
    with open(os.path.join(ROOT, "configs", name)) as f:
        config = yaml.safe_load(f)
    config["anneal"].update(anneal)
    config = resolve(config, kind="anneal")
    problem, schedule, _, _ = config.build()
    return problem, schedule, config


def inputs(problem, schedule, n_paths):
    minimiser = deepest.LBFGS()
    unknowns = jax.vmap(problem.init)(jr.split(jr.key(1), n_paths))
    y0 = jax.vmap(lambda u: minimiser.flatten(problem, u))(unknowns)
    rf = jnp.asarray(schedule.rf)
    factors = jnp.asarray(schedule.alpha ** np.arange(schedule.n_beta))
    config = LoopConfig(
        n_beta=schedule.n_beta,
        save_betas=(),
        ftol=1e-10,
        gtol=1e-9,
        max_evaluations=5000,
        minimiser=minimiser,
        progress_meter=deepest.NoProgressMeter(),
    )
    return y0, rf, factors, config


def chunk_overhead(problem, schedule, n_paths, repeats):
    y0, rf, factors, config = inputs(problem, schedule, n_paths)
    devices = (jax.devices()[0],)
    zero = jnp.asarray(0, jnp.int32)
    one = anneal_lanes.lower(problem, y0, rf, factors, zero, config, devices).compile()
    state = init_loop(problem, y0, rf, factors, config, devices)
    advance = advance_loop.lower(
        problem, y0, rf, factors, zero, state, zero, config, devices
    ).compile()

    def run_one():
        return jax.block_until_ready(one(problem, y0, rf, factors, zero, config, devices))[0]

    def run_chunks():
        # As deepest.anneal does: chunks sized to ~0.25 s, the host checking between them.
        state = init_loop(problem, y0, rf, factors, config, devices)
        chunk, done = 8, False
        while not done:
            began = time.perf_counter()
            stop = jnp.asarray(int(np.max(np.asarray(state.loop_steps))) + chunk, jnp.int32)
            state = advance(problem, y0, rf, factors, zero, state, stop, config, devices)
            done = deepest.annealing.loop_finished(state, config)
            took = time.perf_counter() - began
            chunk = int(max(chunk * min(0.25 / max(took, 1e-4), 2.0), 1))
        return loop_records(state), state

    times_one, times_chunks = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        a = run_one()
        times_one.append(time.perf_counter() - start)
        start = time.perf_counter()
        b, state = run_chunks()
        times_chunks.append(time.perf_counter() - start)
    same = all(
        np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(a, b, strict=True)
    )
    return min(times_one), min(times_chunks), same, state


def checkpoint_cost(problem, schedule, n_paths):
    y0, rf, factors, config = inputs(problem, schedule, n_paths)
    state = init_loop(problem, y0, rf, factors, config, (jax.devices()[0],))
    with tempfile.TemporaryDirectory() as tmp:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            path = save_checkpoint(tmp, state, {"fingerprints": {}, "run_time": 0.0})
            times.append(time.perf_counter() - start)
        size = os.path.getsize(path)
    return float(np.median(times)), size


def sigint_latency(config_name, sets):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        args = ["anneal", os.path.join(ROOT, "configs", config_name), "--out", out]
        args += ["--no-progress", "--set", "output.checkpoint_every=0.5"]
        for s in sets:
            args += ["--set", s]
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepest", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        checkpoint = os.path.join(out + ".incomplete", deepest.annealing.CHECKPOINT)
        while not os.path.exists(checkpoint):
            if proc.poll() is not None:
                raise RuntimeError("the run ended before its first checkpoint")
            time.sleep(0.01)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.communicate()
        took = time.perf_counter() - sent
        partial = deepest.load_result(out).partial
    return took, proc.returncode, partial


def sweep_against_calls(n_settings, n_paths, n_beta=None):
    overrides = {} if n_beta is None else {"n_beta": n_beta}
    problems, schedules = [], []
    for i in range(n_settings):
        with open(os.path.join(ROOT, "configs", "lorenz96_L12.yaml")) as f:
            config = yaml.safe_load(f)
        config["data"]["twin"]["seed"] = i
        config["anneal"].update(overrides, rf0=1e-6 if i % 2 == 0 else 1e-5)
        problem, schedule, _, _ = resolve(config, kind="anneal").build()
        problems.append(problem)
        schedules.append(schedule)
    forget_programs()
    start = time.perf_counter()
    swept = deepest.sweep(problems, schedules, n_paths, jr.key(1), progress=False)
    sweep_time = time.perf_counter() - start
    forget_programs()
    start = time.perf_counter()
    calls = [
        deepest.anneal(p, s, n_paths, jr.key(1), progress=False)
        for p, s in zip(problems, schedules, strict=True)
    ]
    calls_time = time.perf_counter() - start
    worst = max(
        float(np.nanmax(np.abs(a.action - b.action) / np.abs(b.action)))
        for a, b in zip(swept, calls, strict=True)
    )
    same = all(
        np.array_equal(x, y, equal_nan=True)
        for a, b in zip(swept, calls, strict=True)
        for x, y in ((a.action, b.action), (a.iterations, b.iterations), (a.paths, b.paths))
    )
    return sweep_time, calls_time, swept[0].stats, calls[0].stats, worst, same


def forget_programs():
    """Drop every compiled program: jax's caches and the annealing runner's own (the loop
    programs of recent runs, `deepest._annealing._runner._PROGRAMS`)."""
    from deepest._annealing import _runner

    jax.clear_caches()
    _runner._PROGRAMS.clear()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke size (figures mean nothing)")
    parser.add_argument("--paths", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", type=int, default=16)
    parser.add_argument("--sweep-paths", type=int, default=64)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["chunks", "checkpoint", "sigint", "sweep"]
    )
    args = parser.parse_args()
    quick = args.quick
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"jax {jax.__version__}, deepest {deepest.__version__}\n")

    overrides = {"n_beta": 6} if quick else {}
    problem, schedule, _ = load("lorenz96_L12.yaml", **overrides)
    if "chunks" not in args.skip:
        paths = 8 if quick else args.paths
        repeats = 1 if quick else args.repeats
        one, chunks, same, state = chunk_overhead(problem, schedule, paths, repeats)
        steps = int(np.max(np.asarray(state.loop_steps)))
        print("| L = 12 | paths | loop steps | one program (s) | chunks (s) | overhead | same |")
        print("|---|---|---|---|---|---|---|")
        print(
            f"| {schedule.n_beta} β | {paths} | {steps} | {one:.3f} | {chunks:.3f} | "
            f"{100 * (chunks / one - 1):+.1f}% | {same} |\n"
        )
    if "checkpoint" not in args.skip:
        n = 16 if quick else 256
        seconds, size = checkpoint_cost(problem, schedule, n)
        print("| checkpoint of the loop state | paths | write (s) | size (MB) |")
        print("|---|---|---|---|")
        print(f"| L = 12, LBFGS (atomic .npz) | {n} | {seconds:.3f} | {size / 1e6:.1f} |\n")
    if "sigint" not in args.skip:
        # long enough at smoke size that the signal lands in the loop, not after it
        sets = ["anneal.n_paths=16"] if quick else []
        took, code, partial = sigint_latency("lorenz96_L12.yaml", sets)
        print("| Ctrl-C of `deepest anneal` (L = 12) | signal to exit (s) | exit code | partial |")
        print("|---|---|---|---|")
        print(f"| after its first checkpoint | {took:.2f} | {code} | {partial} |\n")
    if "sweep" not in args.skip:
        n_settings = 2 if quick else args.settings
        n_paths = 4 if quick else args.sweep_paths
        sweep_time, calls_time, s_stats, c_stats, worst, same = sweep_against_calls(
            n_settings, n_paths, 6 if quick else None
        )
        print(
            "| L = 12 sweep | settings × paths | sweep (s) | separate calls (s) | "
            "sweep's speed-up | lanes per group | compile: sweep, first call (s) | "
            "worst rel. diff | bit for bit |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        print(
            f"| twin seeds × rf0 | {n_settings} × {n_paths} | {sweep_time:.1f} | "
            f"{calls_time:.1f} | {calls_time / sweep_time:.2f}× | {s_stats['lanes_per_group']} | "
            f"{s_stats['compile_time']:.1f}, {c_stats['compile_time']:.1f} | {worst:.1e} | "
            f"{same} |"
        )


if __name__ == "__main__":
    main()
