"""`deepest anneal … --laplace`: ±σ of every estimate; the uncertainty lines and plot
that `deepest pamc` shares."""

import os

import numpy as np


def uncertainty_summary(estimate, data, which=None, label: str = "") -> list[str]:
    """Lines for summary.txt: each parameter as mean ± σ, and how often the truth lies
    inside the ±2σ bands of the observed and unobserved components."""
    means, stds, params = estimate.bands(which)
    lines = []
    for name, (mean, std) in params.items():
        line = (
            f"{name}{label}: {np.array2string(np.asarray(mean), precision=4)} ± "
            f"{np.array2string(np.asarray(std), precision=4)} (1σ)"
        )
        true = (data.true_params or {}).get(name)
        if true is not None:
            inside = np.all(np.abs(np.asarray(mean) - np.asarray(true)) <= 2 * np.asarray(std))
            line += f"   true {np.array2string(np.asarray(true), precision=4)} inside ±2σ: {inside}"
        lines.append(line)
    if data.truth is not None:
        step = estimate.problem.steps_per_obs
        means, stds = np.asarray(means)[::step], np.asarray(stds)[::step]
        truth = np.asarray(data.truth)
        observed = list(data.observed)
        unobserved = [c for c in range(truth.shape[1]) if c not in observed]
        for what, idx in (("observed", observed), ("unobserved", unobserved)):
            if idx:
                inside = np.abs(truth[:, idx] - means[:, idx]) <= 2 * stds[:, idx]
                lines.append(
                    f"truth inside ±2σ{label}, {what} components: {np.mean(inside):.3f}   "
                    f"(mean σ {np.mean(stds[:, idx]):.4g})"
                )
    return lines


def write_uncertainty_plot(path: str, estimate, data, true_model, horizon: float, which=None):
    """uncertainty.png: the estimates' ±2σ bands against the truth, with the forecast band."""
    import matplotlib.pyplot as plt

    from .. import integrate, plot_uncertainty

    forecast = true_future = None
    if horizon > 0:
        forecast = float(data.times[-1]) + horizon
        if data.truth is not None:
            times = np.linspace(float(data.times[-1]), forecast, 200)
            inputs = getattr(estimate.problem, "inputs", None)  # a driven model's, continuing
            truth = integrate(true_model, np.asarray(data.truth)[-1], times, inputs=inputs)
            true_future = (times, truth)
    fig = plot_uncertainty(estimate, data, which=which, forecast=forecast, true_future=true_future)
    fig.savefig(os.path.join(path, "uncertainty.png"), dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_laplace(path: str, result, problem, data, true_model, config) -> list[str]:
    """`--laplace`: laplace.npz, uncertainty.png and the summary's Laplace lines."""
    from .. import laplace

    lap = laplace(problem, result)
    lap.save(path, overwrite=True)
    horizon = config.output.forecast_horizon
    write_uncertainty_plot(path, lap, data, true_model, horizon, which=result.best)
    lines = [
        f"Laplace at the final β (R_f = {np.asarray(lap.rf)}), best path {result.best}:",
        *uncertainty_summary(lap, data, result.best),
        f"Hessian positive definite: {int(lap.positive_definite.sum())} of {lap.paths.size} paths",
        f"largest Laplace mass: path {int(lap.paths[np.nanargmax(lap.log_mass)])}   "
        f"(lowest action: path {result.best})",
        *(f"WARNING: {line}" for line in lap.warnings(best=result.best)),
    ]
    return lines
