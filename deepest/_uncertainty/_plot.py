"""Plots of uncertainty: estimates with ±2σ bands against the truth, and the expected
action ⟨A₀⟩ against β beside the annealed action levels."""

import numpy as np


def plot_uncertainty(
    estimate,
    data=None,
    *,
    components=None,
    which: int | None = None,
    forecast: float | None = None,
    true_future=None,
):
    """Estimated states with ±2σ bands against the truth, one panel per component, and the
    estimated parameters with ±2σ error bars against their true values. Every band is cut
    at the problem's box (its `intervals`), so none is drawn outside the bounds.

    **Arguments:**

    - `estimate`: a [`deepest.LaplaceResult`][] or a [`deepest.PAMCResult`][] of an
      assimilation.
    - `data`: the [`deepest.Observations`][] (default: the problem's): their truth and
      measurements are drawn.
    - `components`: the components to draw (default: up to 3 observed and 3 unobserved).
    - `which`: of a Laplace result the path (default: the largest Laplace mass), of a
      PAMC result the β (default: the last run).
    - `forecast`: a time past the window: also draw the forecast band to it (Laplace:
      linearised; PAMC: the samples' forecasts, which needs the β's samples).
    - `true_future`: `(times, states)` of the truth over the forecast, if known.

    **Returns:** the figure.
    """
    import matplotlib.pyplot as plt

    problem = estimate.problem
    data = problem.data if data is None else data
    means, _, params = estimate.bands(which)
    means = np.asarray(means)
    low, high, cut = estimate.intervals(which, 2.0)
    times = np.asarray(problem.ts)
    observed = list(data.observed)
    if components is None:
        unobserved = [c for c in range(means.shape[1]) if c not in observed]
        components = observed[:3] + unobserved[:3]
    band = None if forecast is None else estimate.forecast(forecast, which)
    state_low, state_high = _state_box(problem, means.shape[-1])
    n_rows = len(components) + (1 if params else 0)
    fig, axes = plt.subplots(n_rows, 1, figsize=(8, 1.8 * n_rows), squeeze=False)
    axes = axes[:, 0]
    for ax, c in zip(axes, components, strict=False):
        ax.fill_between(
            times,
            low[:, c],
            high[:, c],
            color="C0",
            alpha=0.3,
            lw=0,
            label="±2σ",
        )
        ax.plot(times, means[:, c], color="C0", lw=1.2, label="estimate")
        if data.truth is not None:
            ax.plot(
                np.asarray(data.times), np.asarray(data.truth)[:, c], "k--", lw=0.8, label="truth"
            )
        if c in observed:
            k = observed.index(c)
            ax.plot(
                np.asarray(data.times),
                np.asarray(data.values)[:, k],
                ".",
                color="C1",
                ms=2,
                label="data",
            )
        if band is not None:
            ft, fm, fs = band
            f_low, f_high = (
                np.clip(fm[:, c] + k * fs[:, c], state_low[c], state_high[c]) for k in (-2, 2)
            )
            ax.fill_between(ft, f_low, f_high, color="C2", alpha=0.3, lw=0)
            ax.plot(ft, fm[:, c], color="C2", lw=1.2, label="forecast")
            if true_future is not None:
                ax.plot(true_future[0], np.asarray(true_future[1])[:, c], "k--", lw=0.8)
        ax.set_ylabel(f"$x_{{{c}}}$" + (" (obs.)" if c in observed else ""))
    axes[0].legend(loc="upper right", fontsize=7, ncol=5)
    if params:
        ax = axes[-1]
        names = list(params)
        for k, name in enumerate(names):
            m = np.ravel(params[name][0])
            lo, hi = (np.ravel(a) for a in cut[name])
            xs = k + np.linspace(-0.2, 0.2, m.size) if m.size > 1 else np.array([k])
            ax.errorbar(xs, m, yerr=[m - lo, hi - m], fmt="o", color="C0", capsize=3)
            true = (data.true_params or {}).get(name)
            if true is not None:
                ax.plot(xs, np.ravel(np.broadcast_to(true, m.shape)), "kx")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("parameters ±2σ")
    axes[len(components) - 1].set_xlabel("t")
    fig.tight_layout()
    return fig


def _state_box(problem, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(low (D,), high (D,)): the states' box of an assimilation (±inf where free)."""
    box = problem.bounds()
    if box is None:
        return np.full(dim, -np.inf), np.full(dim, np.inf)
    return tuple(np.asarray(side["path"]).reshape(-1, dim)[0] for side in box)


def plot_expected_action(pamc_result, anneal_result=None, ax=None):
    """⟨A₀⟩ ± its spread against β (precision annealing Monte Carlo) beside the action
    levels A₀ = (n_m/2)·A of the annealed minima: where the chains sit in a minimum's
    basin, ⟨A₀⟩ lies above that level by about half the number of unknowns (the
    Gaussian's n/2).

    **Returns:** the axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    if anneal_result is not None:
        scale = float(np.asarray(pamc_result.problem.unnormalised_scale))
        levels = scale * np.asarray(anneal_result.action)
        betas = np.arange(levels.shape[0])
        for i in range(levels.shape[1]):
            ax.plot(
                betas,
                levels[:, i],
                color="C0",
                lw=0.6,
                alpha=0.5,
                label="annealed minima" if i == 0 else None,
            )
    b = np.asarray(pamc_result.betas)
    ax.errorbar(
        b,
        pamc_result.action0_mean,
        yerr=pamc_result.action0_std,
        fmt="o-",
        color="C3",
        ms=3,
        capsize=2,
        label=r"PAMC $\langle A_0\rangle$ ± std",
    )
    ax.set_yscale("log")
    ax.set_xlabel(r"$\beta$")
    ax.set_ylabel(r"$A_0$")
    ax.legend()
    return ax
