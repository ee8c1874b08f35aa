"""The result of cycled assimilation: forecast, filter analysis and smoothed estimate at
every observation time, with their Laplace standard deviations and DAPPER's statistics."""

from typing import ClassVar

import numpy as np
from jaxtyping import ArrayLike

from .._results import RESULTS, AbstractResult

_KINDS = ("forecast", "analysis", "smoothed")


class CycleResult(AbstractResult):
    """The result of [`deepest.cycle`][]: window after window, each window's Laplace
    Gaussian the background of a later one.

    Arrays over observation times have a leading axis of `len(times)` (the data's times)
    and are NaN where the estimate was not made (the first time's forecast and analysis,
    the analysis between window ends when `shift` > 1, everything after an interrupted
    or stopped run's last window).

    - `times`: the observation times (n_obs,).
    - `forecast`, `forecast_std`: the model run from the previous analysis, before the
      time's data (n_obs, D); standard deviations by the tangent linear model.
    - `analysis`, `analysis_std`: the filter analysis, given the data up to the time
      (n_obs, D), at each window's end.
    - `analysis_cov`: the joint covariance of the analysis state and the estimated
      parameters (n_obs, D + p, D + p), carried to later windows as their background.
    - `background_mean`, `background_cov`: the Gaussian of (x, θ) that the last window
      finished left for the start of the next (at its own start when it was the last
      window): what a resumed run starts the next window from.
    - `smoothed`, `smoothed_std`: the estimate given the data up to the end of the last
      window holding the time (a lag of `window − shift + 1` to `window` observation
      times; less at the end of the data).
    - `window_starts`, `window_ends`: each window's first and last observation index.
    - `params`, `params_std`: the estimated parameters after each window (n_windows, p),
      flattened in `estimate` order (`parameters` reads them by name).
    - `action`: each window's action levels (n_windows, n_beta, n_paths), NaN past the
      β's a window annealed (annealed windows after the first: the last `warm` β's); a
      Gauss–Newton window (`later="gauss_newton"`) has one level, at the last β, on
      path 0 (its one path, from the forecast).
    - `result`: the [`deepest.RESULTS`][] codes of each window's paths at its last β
      (n_windows, n_paths; a Gauss–Newton window's paths after the first
      `not_reached`); `best`: the path chosen (lowest action) per window, −1 for a
      window without data (its background carried by the model: the Kalman filter's
      predict step).
    - `seconds`: wall time of each window (a compiled call's shared by its windows).
    - `last_path`, `last_midpoints`: the last window's estimate on its grid (resuming
      starts the next window from it).
    - `partial`: the run stopped before the last window (interrupted, or `stopped`).
    - `stopped`: why the cycle stopped early (a window whose paths all turned
      non-finite, a Hessian that is not positive definite), or None.
    - `settings`: the run's settings and fingerprints (what `resume` checks).

    `rmse(truth, burn_in=)` and `spread(burn_in=)` are DAPPER's statistics. `save(path)`
    writes `path/cycle.npz`; `CycleResult.load(path)` reads it back.
    """

    file_name: ClassVar[str] = "cycle.npz"

    times: np.ndarray
    forecast: np.ndarray
    forecast_std: np.ndarray
    analysis: np.ndarray
    analysis_std: np.ndarray
    analysis_cov: np.ndarray
    background_mean: np.ndarray
    background_cov: np.ndarray
    smoothed: np.ndarray
    smoothed_std: np.ndarray
    window_starts: np.ndarray
    window_ends: np.ndarray
    params: np.ndarray
    params_std: np.ndarray
    action: np.ndarray
    result: RESULTS
    best: np.ndarray
    seconds: np.ndarray
    last_path: np.ndarray
    last_midpoints: np.ndarray | None
    settings: dict
    partial: bool = False
    stopped: str | None = None
    problem: None = None

    @property
    def n_windows(self) -> int:
        """The number of windows finished."""
        return len(self.window_ends)

    @property
    def parameters(self) -> dict[str, np.ndarray]:
        """{name: (n_windows, …)}: the estimated parameters after each window."""
        out, start = {}, 0
        for name, shape in self.settings["estimate"]:
            size = int(np.prod(shape, dtype=int))
            out[name] = self.params[:, start : start + size].reshape((-1, *shape))
            start += size
        return out

    def _after(self, burn_in: float) -> np.ndarray:
        if not np.isfinite(burn_in) or burn_in < 0:
            raise ValueError(f"`burn_in` must be a non-negative time; got {burn_in}.")
        keep = self.times > self.times[0] + burn_in
        if not np.any(keep):
            raise ValueError(
                f"`burn_in` {burn_in} leaves no observation time (the data span "
                f"{self.times[-1] - self.times[0]:g})."
            )
        return keep

    def rmse(self, truth: ArrayLike, burn_in: float = 0.0) -> dict[str, float]:
        """DAPPER's RMSE of the forecast, analysis and smoothed estimates: at each time
        √(mean over components of (estimate − truth)²), averaged over the times later than
        `burn_in` after the first (where the estimate was made).

        **Arguments:**

        - `truth`: the true states at the observation times (n_obs, D), e.g.
          `data.truth`.
        - `burn_in`: the time (after the first observation time) before which times are
          left out of the average, as DAPPER's `BurnIn`.

        **Returns:** {"forecast": …, "analysis": …, "smoothed": …}.
        """
        truth = np.asarray(truth, float)
        if truth.shape != self.smoothed.shape:
            raise ValueError(
                f"`truth` must have shape (n_obs, D) = {self.smoothed.shape}; got {truth.shape}."
            )
        keep = self._after(burn_in)
        return {k: _mean(self.rmse_series(truth)[k][keep]) for k in _KINDS}

    def rmse_series(self, truth: ArrayLike) -> dict[str, np.ndarray]:
        """The RMSE at each observation time, {kind: (n_obs,)} (NaN where not made)."""
        truth = np.asarray(truth, float)
        return {k: np.sqrt(np.mean((getattr(self, k) - truth) ** 2, axis=1)) for k in _KINDS}

    def spread(self, burn_in: float = 0.0) -> dict[str, float]:
        """DAPPER's spread: at each time √(mean over components of the variance), here the
        Laplace variance, averaged over the times later than `burn_in` after the first.
        Honest uncertainty has spread ≈ RMSE."""
        keep = self._after(burn_in)
        return {k: _mean(self.spread_series()[k][keep]) for k in _KINDS}

    def spread_series(self) -> dict[str, np.ndarray]:
        """The spread at each observation time, {kind: (n_obs,)} (NaN where not made)."""
        return {k: np.sqrt(np.mean(getattr(self, f"{k}_std") ** 2, axis=1)) for k in _KINDS}

    def plot(self, truth: ArrayLike, burn_in: float = 0.0, ax=None):
        """RMSE (solid) and spread (dashed) of the forecast, analysis and smoothed
        estimates against time, the burn-in shaded; DAPPER's averages in the legend.

        **Returns:** the matplotlib axes.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(9, 3.5))
        errors, spreads = self.rmse_series(truth), self.spread_series()
        means, sizes = self.rmse(truth, burn_in), self.spread(burn_in)
        for kind, colour in zip(_KINDS, ("C1", "C0", "C2")):
            ax.plot(
                self.times,
                errors[kind],
                colour,
                lw=0.8,
                label=f"{kind}: RMSE {means[kind]:.3f}, spread {sizes[kind]:.3f}",
            )
            ax.plot(self.times, spreads[kind], colour, lw=0.8, ls="--")
        ax.axvspan(self.times[0], self.times[0] + burn_in, color="0.9", lw=0)
        ax.set(xlabel="time", ylabel="RMSE (—), spread (--)", yscale="log")
        ax.legend(fontsize="small", loc="upper right")
        return ax


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.mean(values)) if values.size else float("nan")
