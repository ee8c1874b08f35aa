"""`deepest anneal CONFIG.yaml`: a data-assimilation problem from a config, annealed."""

import os

import numpy as np

from ._folder import INCOMPLETE, resume_source
from ._laplace import write_laplace
from ._session import (
    PREPARING,
    CommandLineMeter,
    Outcome,
    Session,
    finish,
    kept_on_interrupt,
    open_folder,
    read_config,
    start_jax,
    start_plots,
    write_config,
    write_text,
)


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
            inputs = getattr(result.problem, "inputs", None)  # a driven model's, continuing
            true_future = integrate(true_model, truth[-1], times, inputs=inputs)
            err = float(np.sqrt(np.mean((np.asarray(forecast) - np.asarray(true_future)) ** 2)))
            lines.append(f"forecast RMS error over {horizon:g} time units: {err:.4g}")
    return "\n".join(lines) + "\n"


def run_anneal(
    config_path: str | None,
    sets,
    out,
    overwrite,
    session: Session,
    resume: str | None = None,
    laplace: bool = False,
    force: bool = False,
    progress: bool = True,
) -> Outcome:
    """`deepest anneal`. With `laplace`, a complete result also gets the Laplace
    approximation at its minima (laplace.npz, uncertainty.png, ± σ lines in summary.txt)."""
    config, source, out = read_config("anneal", config_path, sets, out, resume, resume_source)
    jax = start_jax(config.anneal.dtype)
    # With several processes (jax.distributed) process 0 writes; every process reads.
    writes = jax.process_index() == 0
    folder = open_folder(session, out, overwrite, source, shared=True)
    path = folder.path if writes else os.path.normpath(out) + INCOMPLETE

    def work() -> Outcome:
        start_plots()
        if source is None and writes:
            write_config(folder.file("config.yaml"), config)
        with session.phase("data and problem: building"):
            problem, schedule, data, true_model = config.build()
        with session.phase(PREPARING):
            result = config.run(
                problem,
                schedule,
                progress=CommandLineMeter(progress),
                checkpoint=path,
                resume=source,
                check_memory=not force,
            )
        if not writes:
            return Outcome(out, result.partial)
        resume_line = f"continue with `deepest anneal --resume {out}`"

        def write(where):
            summary = write_results(where, result, data, true_model, config, out, session)
            if laplace and not result.partial:
                with session.phase(f"Laplace approximation at {result.n_paths} paths"):
                    lines = write_laplace(where, result, problem, data, true_model, config)
                summary += "\n".join(lines) + "\n"
                write_text(os.path.join(where, "summary.txt"), summary)
            return summary

        save = lambda where: result.save(where, overwrite=True)  # noqa: E731
        return finish(session, folder, write, partial=result.partial, save=save, resume=resume_line)

    return session.run(work, lambda: kept_on_interrupt(folder, "anneal", out), folder)


def write_results(
    path: str, result, data, true_model, config, out: str, session=None, plots: bool = True
) -> str:
    """Write a result's files into the folder `path` (to be published as `out`): the
    result, data, action-level plot, estimates plot and summary.txt (a partial result:
    marked, and without the forecast, so that Ctrl-C is answered at once); a phase of
    the `session` if one is given."""
    if session is None:
        return _write_results(path, result, data, true_model, config, out, plots)
    with session.phase(f"results: the result, plots and summary into {path}"):
        return _write_results(path, result, data, true_model, config, out, plots)


def _write_results(path, result, data, true_model, config, out, plots) -> str:
    import matplotlib.pyplot as plt

    from .. import plot_action_levels, plot_estimates

    result.save(path, overwrite=True)
    data.save(os.path.join(path, "data.npz"))
    if not plots:
        summary = anneal_summary(result, data, true_model, 0.0)
        write_text(os.path.join(path, "summary.txt"), summary)
        return summary
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
    summary += "".join(f"WARNING: {w}\n" for w in result.warnings())
    if result.partial:
        summary = (
            f"PARTIAL RESULT: interrupted at β {result.last_beta} of "
            f"{result.action.shape[0] - 1}; continue with `deepest anneal --resume {out}`\n"
            + summary
        )
    write_text(os.path.join(path, "summary.txt"), summary)
    return summary
