"""The NaKL neuron twin experiment (issue 23), batched paths against a serial scipy
L-BFGS-B annealing of the same action, in one run.

varanneal's NaKL model (`deepest.models.NaKL`: its equations, true parameters as the
truth, `NaKL.bounds` and `NaKL.state_bounds` its boxes) is driven by a chaotic current
(`deepest.chaotic_current`, mean 8, standard deviation 15 µA/cm², 5 ms per Lorenz-63 time
unit) sampled at dt = 0.02 ms; the truth is integrated over 200 ms from rest; V is observed
with noise σ = 1 mV over the first 100 ms (5001 times, R_m = 1/σ² = 1); all 18 parameters
and the gates m, h, n are estimated, each starting path drawn uniformly in the boxes.

Schedule: R_f = rf0·2^β, β = 0 … n_beta − 1, rf0 = (1e-8, 1e-4, 1e-4, 1e-4) per component
(varanneal's tutorial, with α = 2 instead of 1.1); the trapezoid discretisation on the data
grid; `deepest.LevenbergMarquardt` (banded, boxes by projection and an active set). The
level reported is the last β's of the lowest path (its measurement error should be ≈ 1);
there the Laplace band of each parameter, the gates' RMS error, and the voltage predicted
over the next 100 ms with the current continuing: its spikes against the truth's
(coincidence factor Γ, ±2 ms, and the largest timing error of a matched spike).

Speed: the serial baseline (`serial_baseline.serial_anneal`, scipy's L-BFGS-B with the
boxes, gtol = ftol = 1e-8, warm start across β, a jitted value-and-gradient) anneals one
path through the schedule until `--serial-seconds` have passed; deepest then anneals the
same starting paths through the same β's in its own run, and the ratio of times per path
over those β's is reported (compile time excluded from both).

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_nakl.py [--paths 8] [--n-beta 48]
        [--serial-seconds 600] [--quick]
"""

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # unpinned OpenBLAS slows scipy up to 20x
import json
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import deepest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serial_baseline import serial_anneal  # noqa: E402

NaKL = deepest.models.NaKL
DT, WINDOW, HORIZON = 0.02, 100.0, 100.0
RF0 = np.array([1e-8, 1e-4, 1e-4, 1e-4])
REST = (-64.5, 0.05, 0.6, 0.3)


def twin(window=WINDOW, horizon=HORIZON):
    """(stimulus, data over the window, true states over window and horizon, times)."""
    times = np.arange(0.0, window + horizon + DT / 2, DT)
    stimulus = deepest.chaotic_current(times, mean=8.0, amplitude=15.0, timescale=5.0)
    full = deepest.twin_experiment(
        NaKL(),
        4,
        len(times),
        DT,
        [0],
        1.0,
        jr.key(0),
        x0=jnp.asarray(REST),
        spinup=0.0,
        inputs=stimulus,
    )
    n = round(window / DT) + 1
    data = deepest.Observations(
        full.times[:n],
        full.values[:n],
        [0],
        truth=full.truth[:n],
        noise=1.0,
        true_params=full.true_params,
    )
    return stimulus, data, np.asarray(full.truth), times


def problem_of(data, stimulus, discretisation="trapezoid"):
    names = NaKL().parameter_names
    return deepest.Assimilation(
        NaKL(),
        data,
        rm=1.0,
        discretisation=discretisation,
        estimate=names,
        bounds=NaKL.bounds,
        state_bounds=NaKL.state_bounds,
        state_range=[(-100.0, 100.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0)],
        inputs=stimulus,
    )


def assess(problem, result, truth, times, stimulus, n):
    """The figures of the issue's acceptance at the last β of the best path."""
    names = NaKL().parameter_names
    best = result.best
    true = np.array([getattr(NaKL(), k) for k in names], float)
    est = np.array([float(np.ravel(result.params[k])[best]) for k in names])
    rel = np.abs(est / true - 1)
    conductances = np.array([k in ("gNa", "gK", "gL") for k in names])
    at_bound = [k for k, v in result.params_at_bound.items() if v[best].any()]
    start = time.perf_counter()
    lap = deepest.laplace(problem, result)
    laplace_time = time.perf_counter() - start
    std = np.array([float(np.ravel(lap.params_std[k])[best]) for k in names])
    inside = np.abs(est - true) <= 2 * std
    gates = np.asarray(result.paths[best])[:, 1:] - truth[:n, 1:]
    t_pred, x_pred = result.predict(float(times[-1]), n_times=len(times) - n + 1)
    t_pred, x_pred = np.asarray(t_pred), np.asarray(x_pred)
    true_spikes = deepest.spike_times(times[n - 1 :], truth[n - 1 :, 0])
    pred_spikes = deepest.spike_times(t_pred, x_pred[:, 0])
    gamma = deepest.coincidence_factor(
        true_spikes, pred_spikes, delta=2.0, duration=float(times[-1] - times[n - 1])
    )
    errors = [np.min(np.abs(pred_spikes - s)) for s in true_spikes] if len(pred_spikes) else []
    v_rmse = float(np.sqrt(np.mean((x_pred[:, 0] - truth[n - 1 :, 0]) ** 2)))
    return {
        "measurement_error": float(result.measurement_error[-1, best]),
        "action": float(result.action[-1, best]),
        "paths_at_lowest": int(np.sum(result.action[-1] <= 1.01 * result.action[-1, best])),
        "relative_errors": dict(zip(names, rel.round(5).tolist())),
        "conductances_within_5pct": int(np.sum(rel[conductances] <= 0.05)),
        "others_within_2pct": int(np.sum(rel[~conductances] <= 0.02)),
        "on_a_bound": at_bound,
        "laplace_relative_std": dict(zip(names, (std / np.abs(true)).round(5).tolist())),
        "truth_inside_2sigma": int(np.sum(inside)),
        "laplace_seconds": laplace_time,
        "gates_rms_error": dict(zip("mhn", np.sqrt(np.mean(gates**2, axis=0)).round(4).tolist())),
        "spikes_true": len(true_spikes),
        "spikes_predicted": len(pred_spikes),
        "coincidence_factor": gamma,
        "largest_spike_time_error_ms": float(np.max(errors)) if errors else None,
        "prediction_v_rmse_mv": v_rmse,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--paths", type=int, default=8)
    parser.add_argument("--n-beta", type=int, default=48)
    parser.add_argument("--serial-seconds", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="20 ms window, 2 paths, 30 β")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    window = 20.0 if args.quick else WINDOW
    if args.quick:
        args.paths, args.n_beta, args.serial_seconds = 2, 30, 20.0
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, devices {jax.devices()}, "
        f"jax {jax.__version__}\n"
    )
    stimulus, data, truth, times = twin(window, HORIZON)
    n = data.n_times
    problem = problem_of(data, stimulus)
    schedule = deepest.AnnealSchedule(rf0=RF0, alpha=2.0, n_beta=args.n_beta)
    key = jr.key(1)
    init = jax.vmap(problem.init)(jr.split(key, args.paths))
    minimiser = deepest.LevenbergMarquardt()

    result = deepest.anneal(
        problem, schedule, args.paths, key, init=init, minimiser=minimiser, progress=False
    )
    figures = assess(problem, result, truth, times, stimulus, n)
    figures["anneal_seconds"] = result.stats["run_time"]
    figures["anneal_seconds_per_path"] = result.stats["run_time"] / args.paths
    figures["levels"] = {
        "measurement_error": np.round(result.measurement_error[:, result.best], 4).tolist(),
        "action": np.round(result.action[:, result.best], 4).tolist(),
    }

    one = jax.tree.map(lambda a: a[:1], init)
    serial = serial_anneal(problem, schedule, one, max_seconds=args.serial_seconds)
    done = int(serial["n_beta_done"][0])
    same = deepest.AnnealSchedule(rf0=RF0, alpha=2.0, n_beta=done)
    part = deepest.anneal(
        problem, same, args.paths, key, init=init, minimiser=minimiser, progress=False
    )
    per_path = part.stats["run_time"] / args.paths
    figures["speed"] = {
        "betas_compared": done,
        "serial_seconds_per_path": serial["run_time"],
        "serial_evaluations": int(serial["iterations"][:done, 0].sum()),
        "serial_levels": np.round(serial["action"][:done, 0], 4).tolist(),
        "deepest_seconds_per_path": per_path,
        "deepest_levels_path0": np.round(part.action[:, 0], 4).tolist(),
        "ratio": serial["run_time"] / per_path,
    }
    print(json.dumps(figures, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
