"""`deepest anneal CONFIG.yaml`: a data-assimilation problem from a config, annealed."""

import os
import time
import warnings

import numpy as np

from ..annealing import CHECKPOINT
from ..experiments import differences, load
from ._folder import INCOMPLETE, ResultsFolder, default_out, resume_source
from ._laplace import write_laplace


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
            t1 = float(data.times[-1]) + horizon
            times, forecast = result.predict(t1, path=best)
            true_future = integrate(true_model, truth[-1], times)
            err = float(np.sqrt(np.mean((np.asarray(forecast) - np.asarray(true_future)) ** 2)))
            lines.append(f"forecast RMS error over {horizon:g} time units: {err:.4g}")
    return "\n".join(lines) + "\n"


def _resume_config(source: str, config_path: str | None, sets):
    """The config of the run to resume (its folder's), checked against any given anew."""
    saved_path = os.path.join(source, "config.yaml")
    saved = load(saved_path, kind="anneal")
    if config_path is None and not sets:
        return saved
    given = load(config_path or saved_path, sets, kind="anneal")
    differ = differences(saved.model_dump(), given.model_dump())
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
        config = load(config_path, sets, kind="anneal")
        out = default_out(config_path) if out is None else out
    import jax

    if config.anneal.dtype == "float64":
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
                yaml.safe_dump(config.model_dump(), f, sort_keys=False)
        start = time.perf_counter()
        problem, schedule, data, true_model = config.build()
        timings["data and problem"] = time.perf_counter() - start
        with warnings.catch_warnings():  # the CLI says how to resume itself
            warnings.filterwarnings("ignore", "Annealing interrupted")
            result = config.run(
                problem, schedule, progress=progress, checkpoint=path, resume=source
            )
        if not writes:
            return out, result.partial
        timings["compile"] = result.stats["compile_time"]
        timings["annealing"] = result.stats["run_time"]
        start = time.perf_counter()
        summary = write_results(folder.path, result, data, true_model, config, out)
        timings["results"] = time.perf_counter() - start
        if laplace and not result.partial:
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


def write_results(path: str, result, data, true_model, config, out: str) -> str:
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
    horizon = 0.0 if result.partial else config.output.forecast_horizon
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
