"""`deepest anneal CONFIG.yaml`: a data-assimilation problem from a config, annealed."""

import os
import time
import warnings

import numpy as np

from ..annealing import CHECKPOINT
from ._config import (
    choice,
    default_out,
    differences,
    indices,
    integer,
    interval,
    load_config,
    mapping,
    merge,
    number,
    numbers,
)
from ._folder import INCOMPLETE, ResultsFolder, resume_source

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
    "output": {"forecast_horizon": 1.0, "save_betas": [], "checkpoint_every": 60.0},
}

MODELS = ("lorenz96", "lorenz63")


def resolve_anneal_config(config: dict) -> dict:
    """Check a whole anneal config and fill in every default, before any compute.

    Every key is checked (types, ranges, shapes, names), and every message names the key's
    dotted path; an unknown key or name gets the nearest valid one.
    """
    config = merge(ANNEAL_DEFAULTS, config or {}, "config")
    check_anneal_config(config)
    problem, twin = config["problem"], config["data"]["twin"]
    if problem["rm"] is None:
        problem["rm"] = 1.0 / float(twin["noise"]) ** 2
    from ..models import check_estimate, parametrised

    model = _build_model(config["model"], problem["initial_params"])
    check_estimate(problem["estimate"], parametrised(model)[1])
    if config["data"]["file"] is None:
        model.check_dim(config["model"]["dim"])
    return config


def check_anneal_config(config: dict) -> None:
    """Raise a `ValueError` naming the first bad key of a merged anneal config."""
    from ..discretizations import DISCRETIZATIONS

    model, data, problem = config["model"], config["data"], config["problem"]
    a, output = config["anneal"], config["output"]
    choice("model.name", model["name"], MODELS)
    dim = integer("model.dim", model["dim"], 1)
    for name, value in mapping("model.params", model["params"]).items():
        numbers(f"model.params.{name}", value)
    twin = data["twin"]
    if data["file"] is not None:
        if not isinstance(data["file"], str) or not os.path.isfile(data["file"]):
            raise ValueError(f"`data.file`: no such file: {data['file']!r}.")
        if problem["rm"] is None:
            raise ValueError("Set `problem.rm` (1/σ² of the data in `data.file`).")
        n_observed = None
    else:
        if twin["observed"] is None:
            raise ValueError("Set `data.twin.observed` (the measured components) or `data.file`.")
        n_observed = len(indices("data.twin.observed", twin["observed"], dim))
        integer("data.twin.n_times", twin["n_times"], 2)
        number("data.twin.dt", twin["dt"], 0.0)
        # A twin experiment with no noise has no 1/σ² to weigh it by: set `problem.rm`.
        number("data.twin.noise", twin["noise"], 0.0, strict=problem["rm"] is None)
        integer("data.twin.seed", twin["seed"], 0)
        number("data.twin.spinup", twin["spinup"], 0.0, strict=False)
        integer("data.twin.substeps", twin["substeps"], 1)
    if problem["rm"] is not None:
        numbers("problem.rm", problem["rm"], 0.0, n_observed)
    names = [d.name for d in DISCRETIZATIONS]
    choice("problem.discretization", problem["discretization"], names)
    integer("problem.steps_per_obs", problem["steps_per_obs"], 1)
    if not isinstance(problem["estimate"], list) or not all(
        isinstance(e, str) for e in problem["estimate"]
    ):
        raise ValueError(
            f"`problem.estimate` must be a list of parameter names; got {problem['estimate']!r}."
        )
    for name, value in mapping("problem.initial_params", problem["initial_params"]).items():
        numbers(f"problem.initial_params.{name}", value)
    interval("problem.state_range", problem["state_range"])
    for section in ("param_ranges", "bounds"):
        for name, value in mapping(f"problem.{section}", problem[section]).items():
            interval(f"problem.{section}.{name}", value)
    numbers("anneal.rf0", a["rf0"], 0.0, dim)
    number("anneal.alpha", a["alpha"], 1.0)
    n_beta = integer("anneal.n_beta", a["n_beta"], 1)
    integer("anneal.n_paths", a["n_paths"], 1)
    integer("anneal.seed", a["seed"], 0)
    for key in ("ftol", "gtol"):
        if a[key] is not None:
            number(f"anneal.{key}", a[key], 0.0, strict=False)
    integer("anneal.max_steps", a["max_steps"], 1)
    choice("anneal.minimiser", a["minimiser"], MINIMISERS)
    integer("anneal.history_length", a["history_length"], 1)
    number("anneal.damping", a["damping"], 0.0)
    choice("anneal.dtype", a["dtype"], ("float64", "float32"))
    number("output.forecast_horizon", output["forecast_horizon"], 0.0, strict=False)
    number("output.checkpoint_every", output["checkpoint_every"], 0.0)
    if not isinstance(output["save_betas"], list):
        raise ValueError(
            f"`output.save_betas` must be a list of β indices; got {output['save_betas']!r}."
        )
    for b in output["save_betas"]:
        integer("output.save_betas", b, 0)
        if b >= n_beta:
            raise ValueError(f"`output.save_betas` has β {b}, out of range [0, {n_beta}).")


MINIMISERS = ("lbfgs", "levenberg_marquardt")


def _minimiser(a: dict):
    """The `anneal.minimiser` of a config, with its setting (checked)."""
    from .. import LBFGS, LevenbergMarquardt

    if a["minimiser"] == "lbfgs":
        return LBFGS(history_length=a["history_length"])
    if a["minimiser"] == "levenberg_marquardt":
        return LevenbergMarquardt(damping=float(a["damping"]))
    return choice("anneal.minimiser", a["minimiser"], MINIMISERS)


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


def rms_errors(result, data) -> tuple[float, float | None]:
    """RMS errors of the best path against the truth at the observation times, over the
    observed and over the unobserved components (None if every component is observed)."""
    est = np.asarray(result.paths)[result.best, :: result.problem.steps_per_obs]
    truth = np.asarray(data.truth)
    observed = list(data.observed)
    unobserved = [i for i in range(truth.shape[1]) if i not in observed]
    rms = lambda idx: float(np.sqrt(np.mean((est[:, idx] - truth[:, idx]) ** 2)))
    return rms(observed), (rms(unobserved) if unobserved else None)


def anneal_summary(result, data, true_model, horizon: float) -> str:
    """The text of summary.txt: the best path against the truth, and its forecast."""
    from .. import integrate

    best, last = result.best, result.last_beta
    s = result.summary()
    lines = [
        f"paths: {result.n_paths}   β: {result.action.shape[0]}   best path: {best}",
        f"final action (best): {s['final_action_best']:.6g}",
        f"measurement error (best): {s['measurement_error_best']:.6g}"
        + (f"   (expected ≈ {result.expected_action:.3g})" if result.expected_action else ""),
        f"model error (best): {result.model_error[last, best]:.6g}",
        f"largest / smallest final action: "
        f"{np.nanmax(result.action[last]) / np.nanmin(result.action[last]):.4g}",
        f"paths within 5% of the lowest final action: "
        f"{np.mean(result.action[last] <= 1.05 * np.nanmin(result.action[last])):.3f}",
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
        truth = np.asarray(data.truth)
        observed, unobserved = rms_errors(result, data)
        lines.append(f"RMS error, observed components: {observed:.4g}")
        if unobserved is not None:
            lines.append(f"RMS error, unobserved components: {unobserved:.4g}")
        if horizon > 0:
            t_end = float(data.times[-1]) + horizon
            times, forecast = result.predict(t_end, path=best)
            true_future = integrate(true_model, truth[-1], times)
            err = float(np.sqrt(np.mean((np.asarray(forecast) - np.asarray(true_future)) ** 2)))
            lines.append(f"forecast RMS error over {horizon:g} time units: {err:.4g}")
    return "\n".join(lines) + "\n"


def anneal_from_config(
    problem, schedule, config: dict, progress: bool, checkpoint=None, resume=None
):
    """Run [`deepest.anneal`][] with the settings of a resolved config's `anneal` section,
    checkpointing into the folder `checkpoint` and resuming from `resume` if given."""
    import jax.random as jr

    from .. import anneal

    a = config["anneal"]
    return anneal(
        problem,
        schedule,
        int(a["n_paths"]),
        jr.key(int(a["seed"])),
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
        **run_settings(config),
    )


def run_settings(config: dict) -> dict:
    """The keyword arguments of [`deepest.anneal`][] (and [`deepest.sweep`][]) that a
    resolved config sets: tolerances, step limit, minimiser, dtype, saved β's, checkpoint
    interval."""
    import jax.numpy as jnp

    a = config["anneal"]
    return {
        "save_betas": config["output"]["save_betas"],
        "ftol": a["ftol"],
        "gtol": a["gtol"],
        "max_steps": int(a["max_steps"]),
        "minimiser": _minimiser(a),
        "dtype": jnp.dtype(a["dtype"]),
        "checkpoint_every": float(config["output"].get("checkpoint_every", 60.0)),
    }


def _resume_config(source: str, config_path: str | None, sets) -> dict:
    """The config of the run to resume (its folder's), checked against any given anew."""
    saved = resolve_anneal_config(load_config(os.path.join(source, "config.yaml"), []))
    if config_path is None and not sets:
        return saved
    given = (
        load_config(config_path, sets, ANNEAL_DEFAULTS)
        if config_path is not None
        else load_config(os.path.join(source, "config.yaml"), sets, ANNEAL_DEFAULTS)
    )
    differ = differences(saved, resolve_anneal_config(given))
    if differ:
        raise ValueError(
            f"--resume {source}: the run there had other settings of {', '.join(differ)}; "
            "resume it with its own config (omit CONFIG and --set)."
        )
    return saved


def run_anneal(
    config_path: str | None,
    sets,
    out,
    overwrite,
    progress,
    resume: str | None = None,
    laplace: bool = False,
) -> tuple[str, bool]:
    """`deepest anneal`: returns the results folder and whether the result is partial.
    With `laplace`, a complete result also gets the Laplace approximation at its minima
    (laplace.npz, uncertainty.png, ± σ lines in summary.txt)."""
    import yaml

    source = None
    if resume is not None:
        source, out = resume_source(resume)
        config = _resume_config(source, config_path, sets)
    else:
        config = resolve_anneal_config(load_config(config_path, sets, ANNEAL_DEFAULTS))
        out = default_out(config_path) if out is None else out
    import jax

    if config["anneal"]["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401 (now, so that a Ctrl-C's partial result is quick)

    # With several processes (jax.distributed) process 0 writes; every process reads.
    writes = jax.process_index() == 0
    folder = ResultsFolder(out, overwrite, resume_from=source) if writes else None
    path = folder.path if writes else os.path.normpath(out) + INCOMPLETE
    timings = {}
    try:
        if source is None and writes:
            with open(folder.file("config.yaml"), "w") as f:
                yaml.safe_dump(config, f, sort_keys=False)
        start = time.perf_counter()
        problem, schedule, data, true_model = build_anneal(config)
        timings["data and problem"] = time.perf_counter() - start
        with warnings.catch_warnings():  # the CLI says how to resume itself
            warnings.filterwarnings("ignore", "Annealing interrupted")
            result = anneal_from_config(
                problem, schedule, config, progress, checkpoint=path, resume=source
            )
        if not writes:
            return out, result.partial
        timings["compile"] = result.stats["compile_time"]
        timings["annealing"] = result.stats["run_time"]
        start = time.perf_counter()
        summary = write_results(folder.path, result, data, true_model, config, out)
        timings["results"] = time.perf_counter() - start
        if laplace and not result.partial:
            from ._uncertainty import write_laplace

            start = time.perf_counter()
            lines = write_laplace(folder.path, result, problem, data, true_model, config)
            summary += "\n".join(lines) + "\n"
            with open(folder.file("summary.txt"), "w") as f:
                f.write(summary)
            timings["Laplace"] = time.perf_counter() - start
        if not result.partial and os.path.exists(folder.file(CHECKPOINT)):
            os.remove(folder.file(CHECKPOINT))  # a complete result has nothing to resume
        folder.publish()
    except BaseException:
        # A failed run leaves nothing that would block its rerun, unless it holds a
        # checkpoint of finished work (then `--resume` or `--overwrite` says what to do).
        if folder is not None and not os.path.exists(folder.file(CHECKPOINT)):
            folder.discard()
        raise
    print(summary, end="")
    print("time per phase: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    return out, result.partial


def write_results(path: str, result, data, true_model, config: dict, out: str) -> str:
    """Write a result's files into the folder `path` (to be published as `out`): the
    result, data, action-level plot, estimates plot and summary.txt (a partial result:
    marked, and without the forecast, so that Ctrl-C is answered at once)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import plot_action_levels, plot_estimates

    result.save(path, overwrite=True)
    data.save(os.path.join(path, "data.npz"))
    ax = plot_action_levels(result)
    ax.figure.savefig(os.path.join(path, "action_levels.png"), dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    horizon = 0.0 if result.partial else float(config["output"]["forecast_horizon"])
    if data.truth is not None and not result.partial:
        axes = plot_estimates(
            result, data, forecast=float(data.times[-1]) + horizon if horizon > 0 else None
        )
        axes[0].figure.savefig(os.path.join(path, "estimates.png"), dpi=120, bbox_inches="tight")
        plt.close(axes[0].figure)
    summary = anneal_summary(result, data, true_model, horizon)
    if result.partial:
        summary = (
            f"PARTIAL RESULT: interrupted at β {result.last_beta} of "
            f"{result.action.shape[0] - 1}; continue with `deepest anneal --resume {out}`\n"
            + summary
        )
    with open(os.path.join(path, "summary.txt"), "w") as f:
        f.write(summary)
    return summary
