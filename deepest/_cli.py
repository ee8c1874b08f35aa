"""The `deepest` command line: `deepest anneal CONFIG.yaml` and `deepest train CONFIG.yaml`."""

import argparse
import copy
import datetime
import os
import sys

import numpy as np

from ._config import check_keys, set_dotted

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


def _merge(defaults: dict, config: dict, where: str) -> dict:
    """Defaults overlaid by `config`, checking every key; sections merge recursively."""
    check_keys(config, defaults, where)
    out = copy.deepcopy(defaults)
    for key, value in config.items():
        if isinstance(defaults[key], dict) and key not in (
            "params",
            "initial_params",
            "param_ranges",
            "bounds",
        ):
            if not isinstance(value, dict):
                raise ValueError(f"`{where}.{key}` must be a section (a mapping).")
            out[key] = _merge(defaults[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def resolve_anneal_config(config: dict) -> dict:
    """Check an anneal config (unknown keys, values) and fill in every default."""
    config = _merge(ANNEAL_DEFAULTS, config or {}, "config")
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
    from .models._base import check_estimate, parametrised

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
    from ._anneal import AnnealSchedule

    AnnealSchedule(np.asarray(a["rf0"], dtype=float), float(a["alpha"]), a["n_beta"])
    _minimiser(a)
    return config


MINIMISERS = ("lbfgs", "levenberg_marquardt")


def _minimiser(a: dict):
    """The `anneal.minimiser` of a config, with its setting (checked)."""
    from ._levenberg_marquardt import LevenbergMarquardt
    from ._minimisers import LBFGS

    if a["minimiser"] == "lbfgs":
        return LBFGS(history_length=a["history_length"])
    if a["minimiser"] == "levenberg_marquardt":
        return LevenbergMarquardt(damping=float(a["damping"]))
    raise ValueError(f"Unknown `anneal.minimiser` {a['minimiser']!r}; use one of {MINIMISERS}.")


def _build_model(spec: dict, params: dict):
    from . import models

    values = {**spec.get("params", {}), **params}
    if spec["name"] == "lorenz96":
        return models.Lorenz96(**values)
    return models.Lorenz63(**values)


def build_anneal(config: dict):
    """The (problem, schedule, data, true model) an anneal config describes."""
    import jax.random as jr

    from ._anneal import AnnealSchedule
    from ._assimilation import Assimilation
    from ._data import Observations, twin_experiment

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
    from ._data import integrate

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


def _out_dir(out: str | None, config_path: str, overwrite: bool) -> str:
    if out is None:
        stem = os.path.splitext(os.path.basename(config_path))[0]
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = os.path.join("results", f"{stem}-{stamp}")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(
            f"{out} exists and is not empty; choose another --out or pass --overwrite."
        )
    os.makedirs(out, exist_ok=True)
    return out


def _load_config(path: str, sets: list[str]) -> dict:
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections.")
    for assignment in sets:
        set_dotted(config, assignment)
    return config


def anneal_from_config(problem, schedule, config: dict, progress: bool):
    """Run [`deepest.anneal`][] with the settings of a resolved config's `anneal` section."""
    import jax.numpy as jnp
    import jax.random as jr

    from ._anneal import anneal

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

    config = resolve_anneal_config(_load_config(config_path, sets))
    import jax

    if config["anneal"]["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._plot import plot_action_levels, plot_estimates

    out = _out_dir(out, config_path, overwrite)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="deepest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("anneal", "variational annealing of a data-assimilation problem"),
        ("train", "train a network by annealing and by backpropagation"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("config", help="YAML experiment file")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config entry, e.g. --set anneal.n_paths=64",
        )
        p.add_argument("--out", default=None, help="results folder (default: results/NAME-TIME)")
        p.add_argument(
            "--overwrite", action="store_true", help="allow writing into a non-empty results folder"
        )
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        if args.command == "anneal":
            out = run_anneal(args.config, args.set, args.out, args.overwrite, not args.no_progress)
        else:
            from ._experiments import run_train

            out = run_train(args.config, args.set, args.out, args.overwrite, not args.no_progress)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"results: {out}")
    for name in ("action_levels.png", "estimates.png", "summary.txt"):
        if os.path.exists(os.path.join(out, name)):
            print(f"  {os.path.join(out, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
