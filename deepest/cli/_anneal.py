"""`deepest anneal CONFIG.yaml`: a data-assimilation problem from a config, annealed."""

import os

import numpy as np

from ._config import load_config, merge, out_dir

ANNEAL_DEFAULTS = {
    "model": {"name": "lorenz96", "dim": 20, "params": {}},
    "data": {
        "file": None,
        "twin": {
            "n_times": 161,
            "dt": 0.025,
            "observed": None,
            "noise": 0.4,
            "seed": 0,
            "spinup": 20.0,
            "substeps": 10,
        },
    },
    "problem": {
        "rm": None,
        "discretization": "trapezoid",
        "steps_per_obs": 1,
        "estimate": [],
        "initial_params": {},
        "state_range": [-10.0, 10.0],
        "param_ranges": {},
        "bounds": {},
    },
    "anneal": {
        "rf0": 1e-6,
        "alpha": 2.0,
        "n_beta": 31,
        "n_paths": 16,
        "seed": 1,
        "ftol": None,
        "gtol": None,
        "max_steps": 5000,
        "minimiser": "lbfgs",
        "history_length": 10,
        "damping": 1e-3,
        "dtype": "float64",
    },
    "output": {"forecast_horizon": 1.0, "save_betas": []},
}

MODELS = ("lorenz96", "lorenz63")


def resolve_anneal_config(config: dict) -> dict:
    """Check an anneal config (unknown keys, values) and fill in every default."""
    config = merge(ANNEAL_DEFAULTS, config or {}, "config")
    model = config["model"]
    if model["name"] not in MODELS:
        raise ValueError(f"Unknown model {model['name']!r}; use one of {MODELS}.")
    twin = config["data"]["twin"]
    if config["data"]["file"] is None and twin["observed"] is None:
        raise ValueError("Set `data.twin.observed` (the measured components) or `data.file`.")
    n_paths = config["anneal"]["n_paths"]
    if not isinstance(n_paths, int) or n_paths < 1:
        raise ValueError(f"`anneal.n_paths` must be a positive integer; got {n_paths!r}.")
    problem = config["problem"]
    if problem["rm"] is None:
        if config["data"]["file"] is not None:
            raise ValueError("Set `problem.rm` (1/σ² of the data).")
        problem["rm"] = 1.0 / float(twin["noise"]) ** 2
    # Checks that need no data, so that a bad config fails before any compute.
    rm = np.asarray(problem["rm"], dtype=float)
    if not np.all(np.isfinite(rm)) or np.any(rm <= 0):
        raise ValueError(f"`problem.rm` must be positive and finite; got {problem['rm']}.")
    from ..models import check_estimate, parametrised

    model = _build_model(model, problem["initial_params"])
    check_estimate(problem["estimate"], parametrised(model)[1])
    if config["data"]["file"] is None:
        dim = int(config["model"]["dim"])
        model.check_dim(dim)
        if any(int(i) < 0 or int(i) >= dim for i in twin["observed"]):
            raise ValueError(
                f"`data.twin.observed` has indices out of range [0, {dim}): {twin['observed']}."
            )
    a = config["anneal"]
    from .. import AnnealSchedule

    AnnealSchedule(np.asarray(a["rf0"], dtype=float), float(a["alpha"]), a["n_beta"])
    _minimiser(a)
    return config


MINIMISERS = ("lbfgs", "levenberg_marquardt")


def _minimiser(a: dict):
    """The `anneal.minimiser` of a config, with its setting (checked)."""
    from .. import LBFGS, LevenbergMarquardt

    if a["minimiser"] == "lbfgs":
        return LBFGS(history_length=a["history_length"])
    if a["minimiser"] == "levenberg_marquardt":
        return LevenbergMarquardt(damping=float(a["damping"]))
    raise ValueError(f"Unknown `anneal.minimiser` {a['minimiser']!r}; use one of {MINIMISERS}.")


def _build_model(spec: dict, params: dict):
    from .. import models

    values = {**spec.get("params", {}), **params}
    if spec["name"] == "lorenz96":
        return models.Lorenz96(**values)
    return models.Lorenz63(**values)


def build_anneal(config: dict):
    """The (problem, schedule, data, true model) an anneal config describes."""
    import jax.random as jr

    from .. import AnnealSchedule, Assimilation, Observations, twin_experiment

    true_model = _build_model(config["model"], {})
    if config["data"]["file"] is not None:
        data = Observations.load(config["data"]["file"])
    else:
        twin = config["data"]["twin"]
        data = twin_experiment(
            true_model,
            config["model"]["dim"],
            int(twin["n_times"]),
            float(twin["dt"]),
            twin["observed"],
            float(twin["noise"]),
            jr.key(int(twin["seed"])),
            spinup=float(twin["spinup"]),
            substeps=int(twin["substeps"]),
        )
    p = config["problem"]
    model = _build_model(config["model"], p["initial_params"])
    problem = Assimilation(
        model,
        data,
        np.asarray(p["rm"], dtype=float),
        dim=config["model"]["dim"],
        discretization=p["discretization"],
        steps_per_obs=int(p["steps_per_obs"]),
        estimate=tuple(p["estimate"]),
        state_range=tuple(p["state_range"]),
        param_ranges={k: tuple(v) for k, v in p["param_ranges"].items()},
        bounds={k: tuple(v) for k, v in p["bounds"].items()},
    )
    a = config["anneal"]
    schedule = AnnealSchedule(
        np.asarray(a["rf0"], dtype=float), float(a["alpha"]), int(a["n_beta"])
    )
    return problem, schedule, data, true_model


def anneal_summary(result, data, true_model, horizon: float) -> str:
    """The text of summary.txt: the best path against the truth, and its forecast."""
    from .. import integrate

    best = result.best
    s = result.summary()
    lines = [
        f"paths: {result.n_paths}   β: {result.action.shape[0]}   best path: {best}",
        f"final action (best): {s['final_action_best']:.6g}",
        f"measurement error (best): {s['measurement_error_best']:.6g}"
        + (f"   (expected ≈ {result.expected_action:.3g})" if result.expected_action else ""),
        f"model error (best): {result.model_error[-1, best]:.6g}",
        f"largest / smallest final action: "
        f"{np.nanmax(result.action[-1]) / np.nanmin(result.action[-1]):.4g}",
        f"paths within 5% of the lowest final action: "
        f"{np.mean(result.action[-1] <= 1.05 * np.nanmin(result.action[-1])):.3f}",
        f"non-finite paths: {int(np.sum(~result.finite))}",
        "stop reasons over (β, path): "
        + ", ".join(f"{k} {v}" for k, v in s["stop_reasons"].items() if v),
        f"run time: {s['run_time']:.2f} s   compile time: {s['compile_time']:.2f} s",
        "iterations per β (mean over paths): "
        + " ".join(f"{v:.0f}" for v in s["mean_iterations_per_beta"]),
        "iterations per β (max over paths):  "
        + " ".join(f"{v:.0f}" for v in s["max_iterations_per_beta"]),
    ]
    for name, value in result.params.items():
        est = np.asarray(value)[best]
        line = f"estimated {name}: {np.array2string(est, precision=4)}"
        if data.true_params is not None and name in data.true_params:
            line += f"   (true {np.array2string(np.asarray(data.true_params[name]), precision=4)})"
        lines.append(line)
    if data.truth is not None:
        spo = result.problem.steps_per_obs
        est = np.asarray(result.paths)[best, ::spo]
        truth = np.asarray(data.truth)
        obs = list(data.observed)
        unobs = [i for i in range(truth.shape[1]) if i not in obs]
        rms = lambda idx: float(np.sqrt(np.mean((est[:, idx] - truth[:, idx]) ** 2)))
        lines.append(f"RMS error, observed components: {rms(obs):.4g}")
        if unobs:
            lines.append(f"RMS error, unobserved components: {rms(unobs):.4g}")
        if horizon > 0:
            t_end = float(data.times[-1]) + horizon
            times, forecast = result.predict(t_end, path=best)
            true_future = integrate(true_model, truth[-1], times)
            err = float(np.sqrt(np.mean((np.asarray(forecast) - np.asarray(true_future)) ** 2)))
            lines.append(f"forecast RMS error over {horizon:g} time units: {err:.4g}")
    return "\n".join(lines) + "\n"


def anneal_from_config(problem, schedule, config: dict, progress: bool):
    """Run [`deepest.anneal`][] with the settings of a resolved config's `anneal` section."""
    import jax.numpy as jnp
    import jax.random as jr

    from .. import anneal

    a = config["anneal"]
    return anneal(
        problem,
        schedule,
        int(a["n_paths"]),
        jr.key(int(a["seed"])),
        save_betas=config["output"]["save_betas"],
        ftol=a["ftol"],
        gtol=a["gtol"],
        max_steps=int(a["max_steps"]),
        minimiser=_minimiser(a),
        dtype=jnp.dtype(a["dtype"]),
        progress=progress,
    )


def run_anneal(config_path: str, sets, out, overwrite, progress) -> str:
    """`deepest anneal`: returns the results folder."""
    import yaml

    config = resolve_anneal_config(load_config(config_path, sets))
    import jax

    if config["anneal"]["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import plot_action_levels, plot_estimates

    out = out_dir(out, config_path, overwrite)
    problem, schedule, data, true_model = build_anneal(config)
    with open(os.path.join(out, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    result = anneal_from_config(problem, schedule, config, progress)
    result.save(out, overwrite=overwrite)
    data.save(os.path.join(out, "data.npz"))
    ax = plot_action_levels(result)
    ax.figure.savefig(os.path.join(out, "action_levels.png"), dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    if data.truth is not None:
        horizon = float(config["output"]["forecast_horizon"])
        axes = plot_estimates(
            result, data, forecast=float(data.times[-1]) + horizon if horizon > 0 else None
        )
        axes[0].figure.savefig(os.path.join(out, "estimates.png"), dpi=120, bbox_inches="tight")
        plt.close(axes[0].figure)
    summary = anneal_summary(result, data, true_model, float(config["output"]["forecast_horizon"]))
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(summary)
    print(summary, end="")
    return out
