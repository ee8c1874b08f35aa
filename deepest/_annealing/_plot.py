"""Plots of annealing results: action levels, and estimated against true states."""

import numpy as np


def plot_action_levels(result, ax=None, *, x="beta", expected: float | None = None):
    """The action of every path against β (log scale): the "action levels".

    One line per path; the path with the lowest final action is drawn thicker; the action
    level of a path consistent with the data (`result.expected_action`, or `expected`) is
    marked by a dashed line. Levels whose minimisation did not converge (stalled, or out
    of steps: `result.result`) are marked by hollow circles: they may not be minima.

    **Arguments:**

    - `result`: an [`deepest.AnnealResult`][].
    - `ax`: matplotlib axes to draw on (default: a new figure).
    - `x`: "beta" (default) or "rf" for the horizontal axis.
    - `expected`: the expected level, overriding the result's.

    **Returns:** the axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    n_beta = result.action.shape[0]
    if x == "rf":
        rf = np.asarray(result.rf)
        xs = rf if rf.ndim == 1 else rf.mean(axis=1)
        ax.set_xscale("log")
        ax.set_xlabel("$R_f$")
    elif x == "beta":
        xs = np.arange(n_beta)
        ax.set_xlabel(r"$\beta$")
    else:
        raise ValueError(f"`x` must be 'beta' or 'rf'; got {x!r}.")
    best = result.best
    for i in range(result.action.shape[1]):
        ax.plot(
            xs,
            result.action[:, i],
            color="C0" if i != best else "C3",
            lw=0.6 if i != best else 1.8,
            alpha=0.5 if i != best else 1.0,
        )
    unconverged = ~result.converged & np.isfinite(result.action)
    if unconverged.any():
        beta, path = np.nonzero(unconverged)
        ax.scatter(
            xs[beta],
            result.action[beta, path],
            facecolors="none",
            edgecolors="k",
            s=18,
            zorder=3,
            label="not converged",
        )
    level = result.expected_action if expected is None else expected
    if level is not None:
        ax.axhline(level, color="k", ls="--", lw=1, label="expected level")
    if level is not None or unconverged.any():
        ax.legend(loc="best")
    ax.set_yscale("log")
    ax.set_ylabel("action")
    ax.set_title(f"action levels, {result.action.shape[1]} paths")
    return ax


def plot_estimates(
    result, data, components=None, *, path=None, forecast: float | None = None, axes=None
):
    """Estimated against true components of one path, with the forecast past the window.

    **Arguments:**

    - `result`: an [`deepest.AnnealResult`][] of a [`deepest.Assimilation`][].
    - `data`: the [`deepest.Observations`][] (their `truth`, if any, is drawn).
    - `components`: component indices to draw (default: the first two unobserved, or 0).
    - `path`: which path (default `result.best`).
    - `forecast`: draw the forecast to this time (needs `result.problem`); with a known
      model of the truth it is compared when `data.true_params` and the model allow.
    - `axes`: a sequence of axes, one per component.

    **Returns:** the axes.
    """
    import matplotlib.pyplot as plt

    path = result.best if path is None else path
    paths = np.asarray(result.paths)
    dim = paths.shape[2]
    if components is None:
        unobserved = [i for i in range(dim) if i not in data.observed]
        components = unobserved[:2] or [0]
    if axes is None:
        _, axes = plt.subplots(
            len(components), 1, figsize=(7, 2.2 * len(components)), sharex=True, squeeze=False
        )
        axes = axes[:, 0]
    ts = np.asarray(result.problem.ts) if result.problem is not None else None
    if ts is None:
        ts = np.linspace(float(data.times[0]), float(data.times[-1]), paths.shape[1])
    fc = None
    if forecast is not None and result.problem is not None:
        fc = result.predict(forecast, path=path)
    for ax, c in zip(axes, components):
        if data.truth is not None:
            ax.plot(data.times, np.asarray(data.truth)[:, c], "k-", lw=1, label="truth")
        if c in data.observed:
            col = data.observed.index(c)
            ax.plot(
                data.times, np.asarray(data.values)[:, col], ".", ms=2, color="0.5", label="data"
            )
        ax.plot(ts, paths[path, :, c], "C3--", lw=1.2, label="estimate")
        if fc is not None:
            ax.plot(np.asarray(fc[0]), np.asarray(fc[1])[:, c], "C2-", lw=1.2, label="forecast")
        ax.set_ylabel(f"$x_{{{c}}}$")
    axes[0].legend(loc="upper right", fontsize="small", ncol=4)
    axes[-1].set_xlabel("t")
    return axes
