"""The cycle experiment: an anneal experiment's model, data and problem, assimilated window
after window by [`deepest.cycle`][] as its `cycle` section says."""

from typing import Any, Literal

import numpy as np
import pydantic
from pydantic import Field

from .._assimilation import Background
from .._cycling import cycle
from .._cycling._cycle import DEFAULT_PATHS, DEFAULT_SCHEDULE, DEFAULT_WARM
from ._anneal import AnnealConfig, AnnealSection, OutputConfig
from ._base import ConfigSection, default_of, library_check, numbers


class BackgroundConfig(ConfigSection):
    """`cycle.background`: a diagonal [`deepest.Background`][] on the first state (or on it
    and the estimated parameters): `mean` (D or D + p numbers, or `truth`, the twin's true
    first state) and `variance` (one or one per entry of `mean`)."""

    mean: list[float] | Literal["truth"]
    variance: float | list[float]

    @pydantic.model_validator(mode="after")
    def _values(self):
        if isinstance(self.mean, list):
            numbers("cycle.background.mean", self.mean)
        size = len(self.mean) if isinstance(self.mean, list) else None
        numbers("cycle.background.variance", self.variance, 0.0, size)
        return self

    def build(self, data) -> Background:
        """The background, `truth` read from `data`."""
        if self.mean != "truth":
            mean = np.asarray(self.mean, float)
        elif data.truth is None:
            raise ValueError(
                "`cycle.background.mean`: `truth` needs data with a truth (a twin "
                "experiment); `data.file` holds none: give the mean as numbers."
            )
        else:
            mean = np.asarray(data.truth[0], float)
        variance = np.broadcast_to(np.asarray(self.variance, float), mean.shape)
        return library_check(
            "cycle.background", ("mean", "diag"), lambda: Background(mean, diag=variance)
        )


class CycleSection(ConfigSection):
    """`cycle`: the windows of [`deepest.cycle`][] (observation intervals per `window`, the
    `shift` between their ends, the Gaussian they `carry`: "smoother" or "filter"), how
    each later window finds its minimum (`later`: "gauss_newton" in `iterations`
    linearisations from the forecast, or "anneal"), the β's of each annealed later window
    (`warm`), its paths (`n_paths`), the carried covariance's
    `inflation` and added `model_error` (a variance, D variances or a D×D covariance), the
    first window's `background`, and the time `burn_in` that the summary's statistics
    leave out (defaults: the library's)."""

    window: int = Field(ge=1)
    shift: int = Field(default_of(cycle, "shift"), ge=1)
    carry: Literal["smoother", "filter"] = default_of(cycle, "carry")
    later: Literal["gauss_newton", "anneal"] = default_of(cycle, "later")
    iterations: int = Field(default_of(cycle, "iterations"), ge=1)
    warm: int = Field(DEFAULT_WARM, ge=1)
    n_paths: int = Field(DEFAULT_PATHS, ge=1)
    inflation: float = Field(default_of(cycle, "inflation"), gt=0)
    model_error: float | list[float] | list[list[float]] | None = None
    burn_in: float = Field(0.0, ge=0)
    background: BackgroundConfig | None = None

    @pydantic.model_validator(mode="after")
    def _values(self):
        if self.shift > self.window:
            raise ValueError(
                f"`cycle.shift` must be at most `cycle.window` ({self.window}); got {self.shift}."
            )
        if self.carry == "filter" and self.window % self.shift:
            raise ValueError(
                f'With `cycle.carry` "filter", `cycle.shift` must divide `cycle.window` '
                f"({self.window}); got {self.shift}."
            )
        rows = self.model_error if isinstance(self.model_error, list) else [self.model_error]
        for row in rows:
            if row is not None:
                numbers("cycle.model_error", row)
        return self


class CycleAnnealSection(AnnealSection):
    """`anneal` of a cycle: the schedule R_f = rf0·alpha^β (β < n_beta) of a first window
    without a background (windows annealed with one anneal its last `cycle.warm` β's,
    Gauss–Newton windows work at its last R_f), the paths' `seed`, the minimiser and the
    dtype (defaults: [`deepest.cycle`][]'s). Its other keys are an anneal's own: a cycle
    refuses them (its paths are `cycle.n_paths`)."""

    rf0: Any = float(np.asarray(DEFAULT_SCHEDULE.rf0))
    alpha: float = float(DEFAULT_SCHEDULE.alpha)
    n_beta: int = int(DEFAULT_SCHEDULE.n_beta)
    minimiser: str = "levenberg_marquardt"


# keys of an anneal config that `deepest.cycle` does not read: refused unless at their default
_NOT_READ = {
    "anneal": ("n_paths", "ftol", "gtol", "max_evaluations", "group_size"),
    "output": ("forecast_horizon", "save_betas"),
}


class CycleConfig(AnnealConfig):
    """A `deepest cycle` experiment: the `model`, `data` and `problem` sections of an
    [`AnnealConfig`][deepest.experiments.AnnealConfig], the first window's schedule, seed
    and minimiser in `anneal`, the checkpoint interval in `output`, and `cycle`.

    Example:

        config = deepest.experiments.load("configs/cycle_l96.yaml")
        data, true_model, inputs = config.build_data()
        result = deepest.cycle(data=data, **config.cycle_arguments(data, inputs))
    """

    anneal: CycleAnnealSection = CycleAnnealSection()
    cycle: CycleSection

    @pydantic.model_validator(mode="after")
    def _read(self):
        for section, keys in _NOT_READ.items():
            given, default = getattr(self, section), _DEFAULTS[section]
            for key in keys:
                if getattr(given, key) != getattr(default, key):
                    hint = " (the paths per window are `cycle.n_paths`)" if key == "n_paths" else ""
                    raise ValueError(
                        f"`{section}.{key}` is not read by a cycle{hint}; leave it out."
                    )
        twin, c = self.data.twin, self.cycle
        if self.data.file is None:
            if c.window > twin.n_times - 1:
                raise ValueError(
                    f"`cycle.window` ({c.window} observation intervals) is longer than the "
                    f"data ({twin.n_times} times)."
                )
            if c.burn_in >= (twin.n_times - 1) * twin.dt:
                raise ValueError(
                    f"`cycle.burn_in` ({c.burn_in:g}) leaves no observation time (the data "
                    f"span {(twin.n_times - 1) * twin.dt:g})."
                )
        d = self.model.dim
        if c.model_error is not None and np.shape(c.model_error) not in ((), (d,), (d, d)):
            raise ValueError(
                f"`cycle.model_error` must be a variance, {d} variances or a {d}×{d} "
                f"covariance; got shape {np.shape(c.model_error)}."
            )
        if c.background is not None and isinstance(c.background.mean, list):
            from ..models import parametrised

            values = parametrised(self.model.build(self.problem.initial_params))[1]
            n = d + sum(int(np.size(values[name])) for name in self.problem.estimate)
            if len(c.background.mean) not in (d, n):
                raise ValueError(
                    f"`cycle.background.mean` must have {d} entries (the first state) or "
                    f"{n} (and the estimated parameters); got {len(c.background.mean)}."
                )
        if not 1 <= c.warm <= self.anneal.n_beta:
            raise ValueError(
                f"`cycle.warm` must be an integer from 1 to `anneal.n_beta` "
                f"({self.anneal.n_beta}); got {c.warm}."
            )
        return self

    def cycle_arguments(self, data, inputs=None) -> dict:
        """The keyword arguments of [`deepest.cycle`][] but `data` (and `progress`,
        `checkpoint`, `resume`) that this config sets, the background read from `data`."""
        c = self.cycle
        model_error = None if c.model_error is None else np.asarray(c.model_error, float)
        return dict(
            **self.problem_arguments(inputs),
            window=c.window,
            shift=c.shift,
            carry=c.carry,
            later=c.later,
            iterations=c.iterations,
            warm=c.warm,
            n_paths=c.n_paths,
            inflation=c.inflation,
            model_error=model_error,
            background=None if c.background is None else c.background.build(data),
            schedule=self.anneal.schedule(),
            minimiser=self.anneal.minimiser_object(),
            key=self.key(),
            checkpoint_every=self.output.checkpoint_every,
        )


_DEFAULTS = {"anneal": CycleAnnealSection(), "output": OutputConfig()}
