"""Cycled assimilation: [`deepest.cycle`][], window after window, each window's Laplace
Gaussian the background of a later one."""

import dataclasses
import hashlib
import os
import time
import warnings
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray

from .._annealing import AbstractMinimiser, AnnealSchedule, LevenbergMarquardt, anneal
from .._annealing._checkpoint import problem_digest
from .._annealing._runner import (
    Interruption,
    RunSettings,
    _flatten as flatten_paths,
    check_resources,
    run_loop,
)
from .._assimilation import Assimilation, Background
from .._data import Inputs, Observations
from .._misc import cast_floating, renamed_keywords
from .._results import RESULTS, codes_of, name_of, results_of
from . import _gauss_newton
from ._forecast import forecast, posterior, prior_paths
from ._gauss_newton import CHUNK, Carry, Program, run_chunk
from ._solution import CycleResult

# Measured on DAPPER's Lorenz-96 benchmark (benchmarks/bench_dapper.py).
DEFAULT_SCHEDULE = AnnealSchedule(rf0=1e-1, alpha=10.0, n_beta=8)
DEFAULT_PATHS = 4
DEFAULT_WARM = 2


@renamed_keywords(discretization="discretisation")
def cycle(
    model,
    data: Observations,
    *,
    window: int,
    rm: ArrayLike,
    key: PRNGKeyArray,
    shift: int = 1,
    discretisation="trapezoid",
    steps_per_obs: int = 1,
    schedule: AnnealSchedule | None = None,
    warm: int | None = None,
    n_paths: int | None = None,
    background: Background | None = None,
    estimate: Sequence[str] = (),
    params: Mapping[str, ArrayLike] | None = None,
    dim: int | None = None,
    carry: str = "smoother",
    inflation: float = 1.0,
    model_error: ArrayLike | None = None,
    state_range=(-10.0, 10.0),
    param_ranges: Mapping[str, tuple[float, float]] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    state_bounds=None,
    inputs: Inputs | None = None,
    minimiser: AbstractMinimiser | None = None,
    later: str = "gauss_newton",
    iterations: int = 2,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: float = 60.0,
    resume: str | os.PathLike | None = None,
    check_memory: bool = True,
) -> CycleResult:
    r"""Cycled assimilation: window after window along `data`, each window's Laplace
    Gaussian carried forward as the background of a later one — an iterated extended
    Kalman smoother whose first window is annealed from many paths to its consistent
    minimum, and whose later windows start from the forecast (and are annealed too where
    Gauss–Newton from it does not converge).

    Window k spans the observation times a…e: e = (k + 1)·`shift`, a = e − `window`
    (consecutive windows overlap when `shift` < `window`, as an iterative ensemble Kalman
    smoother's lag); the first windows, which would start before the first time, span the
    first `window` intervals with the given `background` (or none) on the first state and
    the data after their end left out. The background N(m, B) on (x(t_a), θ), B =
    `inflation`·P + `model_error`, is what an earlier window's Laplace Gaussian says of
    t_a; the window's model term carries it to its later times (the Kalman forecast
    M B Mᵀ + Q, Q the action's own model error) and its data update it. Two ways to
    `carry` it:

    - `"smoother"` (default): m, P the last window's estimate at t_a (given the data up
      to its end), and the window assimilates only the data after that end — each datum
      once, one chain of windows (iEnKS's single data assimilation). Exact for a linear
      model when `shift` = `window` or the model is perfect (R_f → ∞); with a lag and
      model error it leaves out what the earlier data said of the model error inside
      the window.
    - `"filter"`: m, P the filter analysis at t_a (the window that ended there, at its
      last node; `shift` must divide `window`), and the window assimilates all its data
      after a. By the Markov property its posterior is then P(X | data up to t_e) for
      any lag, with or without model error; windows `window/shift` apart form separate
      chains.

    Either way a window's end is the filter analysis at t_e and its earlier times are
    smoothed with a lag; for a linear model with Gaussian noise every number is the
    Kalman filter's and the Rauch–Tung–Striebel smoother's (tested to 1e-8). For a
    chaotic model the Laplace covariance is a linearisation: an `inflation` of a few per
    cent (1.03–1.05 on Lorenz-96, benchmarks/bench_dapper.py) keeps the spread honest.

    The first window anneals its paths (all at once, as [`deepest.anneal`][]) with
    Levenberg–Marquardt by default, and takes the lowest at the last β: over the whole
    `schedule` from the usual draws; or, given a `background` on all its unknowns (x₀,
    and θ when estimated), which already constrains its path, over the last `warm` β's
    from the background's mean and draws of it, run by the model. A later window's
    background is carried, and it starts from the forecast (the last window's estimate
    continued by the model):

    - `later="gauss_newton"` (default): `iterations` Gauss–Newton linearisations from the
      forecast at the schedule's last R_f, the last one's curvature the window's Gaussian
      (an iterated extended Kalman smoother); consecutive windows run as one compiled
      program (`lax.scan`, 32 windows a call). A window whose last step is still large
      (over 20 posterior standard deviations in some unknown), non-finite or without
      positive definite curvature is annealed instead, as below: once the cycle has locked
      on, Gauss–Newton from the forecast reaches the minimum for a few per cent of
      annealing's cost (benchmarks/bench_dapper.py: on DAPPER's Lorenz-96, faster per
      observation time than its iEnKS and more accurate; within 1% of annealing every
      window's RMSE on three settings, 3% above it on the sparsest in space).
    - `later="anneal"`: anneal the last `warm` β's of the schedule from the forecast and
      paths drawn from the background and run by the model (`n_paths` in all), the
      lowest at the last β taken.

    The R_f of each window are scaled so that the model error's precision per step,
    R_f·n_m/n_f, is that of a window with all its data measured, whatever is masked. An
    annealed minimum is polished by a Newton step and its Laplace Gaussian (with
    `later="anneal"` the exact Hessian's, Gauss–Newton's where that is not positive
    definite; with `"gauss_newton"` Gauss–Newton's, as every window's) gives the standard
    deviations and the covariance carried on. Every annealed window is one compiled
    program reused for all of them (same shapes).

    **Arguments:**

    - `model`, `rm`, `discretisation`, `steps_per_obs`, `estimate`, `params`, `dim`,
      `state_range`, `param_ranges`, `bounds`, `state_bounds`, `inputs`: as for
      [`deepest.Assimilation`][] (`inputs` covering the whole run).
    - `data`: the [`deepest.Observations`][] of the whole run (equally spaced times).
    - `window`: observation intervals per window (≥ 1): longer windows smooth more and
      hold on where the data are sparse, at a cost growing with their length.
    - `shift`: observation times between consecutive windows' ends (≥ 1, ≤ `window`;
      default 1: an analysis at every time). Data after the last window's end (when
      `shift` does not divide the number of intervals) are not assimilated.
    - `carry`: `"smoother"` or `"filter"`, above.
    - `key`: PRNG key for the paths (each window folds its index in).
    - `schedule`: the [`deepest.AnnealSchedule`][] of a first window without a
      background; other annealed windows anneal its last `warm` β's, and Gauss–Newton
      windows work at its last R_f (default: R_f = 0.1·10^β, β = 0…7).
    - `later`: `"gauss_newton"` or `"anneal"`, above.
    - `iterations`: Gauss–Newton linearisations per later window (default 2: one step
      from the forecast, one for the Gaussian and its polish).
    - `warm`: β's per annealed window after the first (default 2).
    - `n_paths`: paths per annealed window (default 4).
    - `background`: a [`deepest.Background`][] on the first state (or on it and θ) before
      the first data; default none (the first window from the data alone). On all the
      unknowns, it makes the first window start warm (above): give none, or anneal with a
      `schedule` whose last `warm` β's suit it, where it is too broad to place the path.
    - `inflation`: multiplicative inflation (> 0) of the carried covariance (default 1:
      exact for a linear model).
    - `model_error`: additive model error added to the carried covariance of the states:
      a variance, D variances, or a (D, D) covariance.
    - `minimiser`: each window's minimiser (default [`deepest.LevenbergMarquardt`][]).
    - `progress`: a tqdm bar over windows.
    - `checkpoint`: a folder the result so far is written to (`cycle.npz`, atomically,
      marked `partial`) every `checkpoint_every` seconds, when interrupted and when a
      window fails; `resume`: such a folder (or a saved result) of this same run to go
      on from, bit for bit (a run of other data or settings is refused, naming what
      differs).
    - `check_memory`: as for [`deepest.anneal`][], checked when the first window's
      annealing is built (every later window has its shapes); `False` tries anyway.

    A window without data is its background carried by the model (the Kalman filter's
    predict step). The forecasts' covariance adds the action's model error per step
    (exactly the Kalman filter's for the one-residual schemes "euler", "rk4" and
    "trapezoid"'s explicit part; approximately, to O(h²), for the midpoint schemes).

    A window whose paths all turn non-finite, or whose Hessian is not positive
    definite, stops the cycle: the finished windows are returned (and written to
    `checkpoint`) with `partial=True` and `stopped` saying why. Ctrl-C does the same
    between windows (after the compiled call it lands in: at most 32 windows on).

    **Returns:** a [`deepest.CycleResult`][].

    **Example:**

        result = deepest.cycle(deepest.models.Lorenz96(8.0), data, window=6, rm=1.0,
                               discretisation="rk4", inflation=1.03, key=jax.random.key(0))
        result.rmse(data.truth, burn_in=10.0)
    """
    schedule = DEFAULT_SCHEDULE if schedule is None else schedule
    warm = DEFAULT_WARM if warm is None else warm
    n_paths = DEFAULT_PATHS if n_paths is None else n_paths
    minimiser = LevenbergMarquardt() if minimiser is None else minimiser
    plan = _Plan.check(
        data, window, shift, schedule, warm, n_paths, inflation, carry, later, iterations
    )
    if dim is None and data.truth is not None:
        dim = data.truth.shape[1]
    if isinstance(inputs, Inputs):
        times = np.asarray(data.times)
        inputs.check_covers(times[0], times[-1], "the cycle")
    settings = dict(
        rm=rm,
        dim=dim,
        discretisation=discretisation,
        steps_per_obs=steps_per_obs,
        estimate=estimate,
        params=params,
        state_range=state_range,
        param_ranges=param_ranges,
        bounds=bounds,
        state_bounds=state_bounds,
        inputs=inputs,
    )
    if background is not None:  # in the carried form: one program for every window's Laplace
        background = Background(background.mean, chol=_chol(background))
    # The first windows' problem (data from the first time, the user's background) and
    # the later windows' (the first state's data in the background): built, so checked,
    # before any compute; each window replaces their arrays.
    mask = np.ones(data.values.shape, bool) if data.mask is None else np.asarray(data.mask)
    values = np.where(mask, np.asarray(data.values), 0.0)
    first = Assimilation(
        model, _cut(data, values, mask, 0, window), background=background, **settings
    )
    d, p = first.dim, first.banded_shape[2]
    placeholder = Background(np.zeros(d + p), diag=np.ones(d + p))
    later = eqx.tree_at(lambda q: q.background, first, placeholder, is_leaf=_is_none)
    added = _model_error(model_error, d)
    fingerprint = _fingerprint(
        data, first, plan, key, minimiser, inflation, added, schedule, n_paths
    )
    cycler = _Cycler.build(
        data,
        values,
        mask,
        first,
        later,
        plan,
        schedule,
        n_paths,
        key,
        minimiser,
        inflation,
        added,
        check_memory,
    )
    state = _State.start(np.asarray(data.times), d, p, plan, first, n_paths)
    if resume is not None:
        state.resume(resume, fingerprint)
    if state.k < plan.n_windows:
        bar = _bar(progress, plan.n_windows, state.k)
        checked, annealer_next, last_write = False, False, time.monotonic()
        try:
            while state.k < plan.n_windows:
                k, began = state.k, time.perf_counter()
                stopped = None
                try:
                    ran = 0 if annealer_next else cycler.chunk(state)
                    # a call that stopped short left its next window to the annealer
                    annealer_next = 0 < ran < CHUNK
                    if not ran:
                        stopped = cycler.window(k, state, check=not checked)
                        checked = True
                finally:  # windows recorded when a Ctrl-C arrived keep their time too
                    if state.k > k:
                        state.seconds[k:] = [(time.perf_counter() - began) / (state.k - k)] * (
                            state.k - k
                        )
                        bar.update(state.k - k)
                if stopped is not None:
                    state.stopped = stopped
                    break
                if checkpoint is not None and time.monotonic() - last_write > checkpoint_every:
                    _write(state.result(fingerprint, partial=True), checkpoint)
                    last_write = time.monotonic()
        except KeyboardInterrupt:
            state.interrupted = True
        except BaseException:  # the finished windows are kept, then the error raised
            if checkpoint is not None and state.k:
                _write(state.result(fingerprint, partial=True), checkpoint)
            raise
        finally:
            bar.close()
    out = state.result(fingerprint, partial=state.k < plan.n_windows)
    if checkpoint is not None:
        _write(out, checkpoint)
    return out


def _write(result: CycleResult, checkpoint) -> None:
    """Write the result to the checkpoint folder (atomically); a failed write warns and
    the run goes on, the result in memory."""
    try:
        result.save(checkpoint, overwrite=True)
    except OSError as error:
        warnings.warn(
            f"The cycle's checkpoint could not be written to {checkpoint}: {error}. The run "
            "goes on; the last checkpoint there, if any, is older.",
            stacklevel=3,
        )


class _Cycler(eqx.Module):
    """What every window shares: the data, the two problems whose arrays each window
    replaces, the schedule and the carrying settings."""

    data: Observations
    values: np.ndarray
    mask: np.ndarray
    first: Assimilation
    later: Assimilation
    plan: "_Plan"
    schedule: AnnealSchedule
    n_paths: int
    key: PRNGKeyArray
    minimiser: AbstractMinimiser
    inflation: float
    added: np.ndarray
    check_memory: bool
    compiled: Program | None = None  # the later windows' Gauss–Newton program

    @classmethod
    def build(cls, *args) -> "_Cycler":
        cycler = cls(*args)
        plan = cycler.plan
        if plan.later != "gauss_newton":
            return cycler
        eligible = np.array([cycler.eligible(k) for k in range(plan.n_windows)], bool)
        compiled = Program(
            template=cycler.later,
            times=jnp.asarray(cycler.data.times),
            values=jnp.asarray(cycler.values),
            mask=jnp.asarray(cycler.mask),
            starts=jnp.asarray(plan.starts),
            ends=jnp.asarray(plan.ends),
            eligible=jnp.asarray(eligible),
            rf=jnp.asarray(np.asarray(cycler.schedule.rf[-1], float)),
            n_ref=cycler.n_ref,
            inflation=float(cycler.inflation),
            added=jnp.asarray(cycler.added),
            precision=cycler.precision,
            window=plan.window,
            shift=plan.shift,
            filter=plan.carry == "filter",
            iterations=plan.iterations,
            tolerance=_gauss_newton.TOLERANCE,
            grid=None if _gauss_newton.reads_time(cycler.later) else _grid(cycler.data, plan),
        )
        return eqx.tree_at(lambda c: c.compiled, cycler, compiled, is_leaf=_is_none)

    def eligible(self, k: int) -> bool:
        """Whether window k may be run by the compiled program: a later window (its
        background carried) with data."""
        if k == 0 or self.plan.carry == "filter" and self.plan.starts[k] == 0:
            return False
        a, e = int(self.plan.starts[k]), int(self.plan.ends[k])
        keep = self.mask[a : a + self.plan.window + 1].copy()
        rows = np.arange(a, a + self.plan.window + 1)
        first = a if self.plan.carry == "filter" else e - self.plan.shift
        keep &= ((rows > first) & (rows <= e))[:, None]
        return bool(keep.any())

    def chunk(self, state) -> int:
        """Run the compiled program from window `state.k` and record the windows it
        finished (0: window `state.k` is the annealer's). A Ctrl-C during the call or the
        recording takes effect once every finished window is recorded."""
        k, plan = state.k, self.plan
        if self.compiled is None or not self.eligible(k):
            return 0
        width = self.later.banded_shape[1]
        last = dict(state.last_unknowns)
        last["params"] = self.later.from_banded(
            jnp.zeros((1, width)), jnp.asarray(state.params[-1])
        )["params"]
        c = plan.window // plan.shift if plan.carry == "filter" else 1
        ring = [int(plan.ends[j]) if j >= 0 else 0 for j in range(k - c, k)]
        ring = np.asarray(ring)[np.argsort([j % c for j in range(k - c, k)])]  # slot j % c
        before = int(plan.ends[k - 1])
        carry = Carry(
            jnp.asarray(state.carry_z),
            jnp.asarray(state.carry_cov),
            jnp.asarray(state.analysis_z[ring]),
            jnp.asarray(state.analysis_cov[ring]),
            jnp.asarray(state.analysis_z[before]),
            jnp.asarray(state.analysis_cov[before]),
            self.later.to_banded(jax.tree.map(jnp.asarray, last))[0],
            jnp.asarray(state.last_window[0]),
            jnp.asarray(True),
        )
        codes = np.full(self.n_paths, codes_of(RESULTS.not_reached))
        codes[0] = codes_of(RESULTS.successful)  # the one path, from the forecast
        with Interruption(patient=True) as interrupt:
            records, done = jax.device_get(run_chunk(self.compiled, carry, jnp.asarray(k)))
            for i in range(int(done)):
                j = k + i
                a, e = int(plan.starts[j]), int(plan.ends[j])
                after = int(plan.starts[min(j + 1, plan.n_windows - 1)])
                levels = np.full((1, self.n_paths), np.nan)
                levels[0, 0] = records["action"][i]
                one = jax.tree.map(lambda x, i=i: x[i], records)
                state._record(
                    j, a, e, after, (levels, codes.copy()), 0, one["mean"], one["std"],
                    one["covs"], one["forecast"], self.later, None,
                )  # fmt: skip
        if interrupt.hit:
            raise KeyboardInterrupt
        return int(done)

    @property
    def n_ref(self) -> int:
        """The measured entries of a window with all its data."""
        return self.plan.window * len(self.data.observed)

    @property
    def precision(self):
        """The model error's precision per step, R_f·n_m/n_f at the last β."""
        n_f = self.first.dim * (self.first.n_model - 1)
        return jnp.asarray(np.asarray(self.schedule.rf[-1], float) * self.n_ref / n_f)

    def problem(self, state, k: int, a: int, e: int):
        """Window k's problem (times a…e) and its count of measured entries. `"filter"`:
        the data after a (from a for a first window) up to e, the background of a later
        window the analysis at a. `"smoother"`: the data after the last window's end up to
        e (from the first time for the first window), the background the last window's
        estimate at a."""
        keep = self.mask.copy()
        if self.plan.carry == "filter":
            keep[: a + (a > 0)] = False  # before the window, or in its background
        elif k:
            keep[: e - self.plan.shift + 1] = False  # assimilated by earlier windows
        keep[e + 1 :] = False
        n_m = int(keep[a : a + self.plan.window + 1].sum())
        rows = slice(a, a + self.plan.window + 1)
        arrays = tuple(
            jnp.asarray(x) for x in (self.data.times[rows], self.values[rows], keep[rows])
        )
        cut = eqx.tree_at(_data_arrays, self.first.data, arrays)  # checked as the whole run
        if self.plan.carry == "filter" and a == 0 or k == 0:
            return eqx.tree_at(lambda q: q.data, self.first, cut), n_m
        if self.plan.carry == "filter":
            mean, cov = state.analysis_z[a], state.analysis_cov[a]
        else:
            mean, cov = state.carry_z, state.carry_cov
        d = self.first.dim
        cov = self.inflation * cov
        cov[:d, :d] += self.added
        background = Background(mean, cov=cov)
        return eqx.tree_at(lambda q: (q.data, q.background), self.later, (cut, background)), n_m

    def window(self, k: int, state, check: bool) -> str | None:
        """Anneal window k, take its Laplace Gaussian and record it in `state`; or say
        why the cycle stops here."""
        plan, schedule = self.plan, self.schedule
        a, e = int(plan.starts[k]), int(plan.ends[k])
        where = f"window {k} (times {a}…{e})"
        problem, n_m = self.problem(state, k, a, e)
        if n_m == 0:
            return self.carried(k, state, problem, a, e, where)
        scale = self.n_ref / n_m  # the same model precision whatever is masked
        if k == 0 and not _warm_start(problem):  # no background: the whole schedule
            sched = AnnealSchedule(schedule.rf0 * scale, schedule.alpha, schedule.n_beta)
            init = None
        else:
            sched = AnnealSchedule(schedule.rf[-plan.warm] * scale, schedule.alpha, plan.warm)
            if check and self.check_memory:  # as `anneal` would, before the paths are drawn
                settings = RunSettings.check(
                    sched, self.n_paths, None, None, None, 5000, self.minimiser, None, False
                )
                check_resources(problem, sched, settings, jax.devices()[:1], None)
            lower, upper = _box(problem)
            init = _starts(state, problem, k, a, lower, upper, self.key, self.n_paths)
        if check or init is None:  # the first window run: every check of `anneal`
            run = anneal(
                problem,
                sched,
                self.n_paths,
                jr.fold_in(self.key, k),
                init=init,
                minimiser=self.minimiser,
                progress=False,
                throw=False,
                devices=jax.devices()[:1],  # as `_anneal_checked`: resumes are bit for bit
                check_memory=self.check_memory,
            )
        else:
            run = _anneal_checked(problem, sched, init, self.n_paths, self.minimiser)
        if run.partial:
            raise KeyboardInterrupt
        if not np.any(np.isfinite(run.action[-1])):
            names = ", ".join(sorted(set(_names(run.result))))
            return f"{where}: every path turned non-finite ({names})"
        best = int(np.nanargmin(run.action[-1]))
        chosen = jax.tree.map(lambda u: jnp.asarray(u[best]), run.unknowns)
        rf = jnp.asarray(np.asarray(sched.rf[-1]), chosen["path"].dtype)
        after = int(plan.starts[min(k + 1, plan.n_windows - 1)])  # the next window's start
        nodes = jnp.asarray([e - a, after - a]) * problem.steps_per_obs
        if plan.later == "gauss_newton":  # every window's Gaussian is Gauss–Newton's
            gaussian = _gauss_newton.posterior(problem, chosen, rf, nodes)
        else:
            gaussian = posterior(problem, chosen, rf, nodes)
        if not bool(gaussian[3]) and plan.later == "anneal":  # not a strict minimum
            gaussian = posterior(problem, chosen, rf, nodes, True)  # Gauss–Newton's curvature
        if not bool(gaussian[3]):
            return (
                f"{where}: the Hessian of A₀ at its minimum is not positive definite (give "
                "a `background`, or lengthen the window)"
            )
        fc = self.forecast(k, state, problem)
        levels = np.asarray(run.action), codes_of(run.result)[-1]
        state.record(k, a, e, after, levels, best, *gaussian[:3], fc, problem)
        return None

    def forecast(self, k: int, state, problem):
        """The analysis at the last window's end carried to this window's new times."""
        before = int(self.plan.ends[k]) - self.plan.shift
        if not k or not np.all(np.isfinite(state.analysis_z[before])):
            return None
        return forecast(
            problem,
            jnp.asarray(self.data.times[before]),
            jnp.asarray(state.analysis_z[before]),
            jnp.asarray(state.analysis_cov[before]),
            self.plan.shift * problem.steps_per_obs,
            self.precision,
        )

    def carried(self, k: int, state, problem, a: int, e: int, where: str) -> str | None:
        """A window without data: its posterior is its background carried by the model
        (the Kalman filter's predict step), recorded as a window's would be."""
        if problem.background is None:
            return f"{where} has no measured data and no background"
        spo, shift = problem.steps_per_obs, self.plan.shift
        after = int(self.plan.starts[min(k + 1, self.plan.n_windows - 1)])
        t_a = jnp.asarray(self.data.times[a])
        mean, cov = problem.background.mean, problem.background.covariance
        path, std, end = forecast(problem, t_a, mean, cov, (e - a) * spo, self.precision)
        if after > a:
            _, _, then = forecast(problem, t_a, mean, cov, (after - a) * spo, self.precision)
        else:
            then = cov
        d = problem.dim
        unknowns = problem.from_banded(jnp.zeros((1, problem.banded_shape[1])), mean[d:])
        stds = problem.from_banded(
            jnp.zeros((1, problem.banded_shape[1])), jnp.sqrt(jnp.diagonal(end)[d:])
        )
        unknowns["path"], stds["path"] = path, std
        if problem.discretisation.has_midpoints:
            unknowns["midpoints"] = (path[1:] + path[:-1]) / 2
        covs = jnp.stack([end, then])
        fc = self.forecast(k, state, problem)
        levels = (
            np.full((self.plan.warm, self.n_paths), np.nan),
            np.full(self.n_paths, codes_of(RESULTS.successful)),
        )
        state.record(k, a, e, after, levels, -1, unknowns, stds, covs, fc, problem, e - shift + 1)
        return None


class _Plan(eqx.Module):
    window: int
    shift: int
    warm: int
    carry: str
    later: str
    iterations: int
    starts: np.ndarray
    ends: np.ndarray

    @property
    def n_windows(self) -> int:
        return len(self.ends)

    @classmethod
    def check(
        cls, data, window, shift, schedule, warm, n_paths, inflation, carry, later, iterations
    ) -> "_Plan":
        if not isinstance(data, Observations):
            raise TypeError(f"`data` must be deepest.Observations; got {type(data).__name__}.")
        n_obs = data.times.size
        for name, value in (("window", window), ("shift", shift), ("n_paths", n_paths)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        if window > n_obs - 1:
            raise ValueError(
                f"`window` ({window} observation intervals) is longer than the data "
                f"({n_obs} times, {n_obs - 1} intervals)."
            )
        if carry not in ("smoother", "filter"):
            raise ValueError(f'`carry` must be "smoother" or "filter"; got {carry!r}.')
        if shift > window:
            raise ValueError(f"`shift` must be at most `window` ({window}); got {shift}.")
        if carry == "filter" and window % shift:
            raise ValueError(
                f'With carry="filter" `shift` must divide `window` ({window}): each window '
                f"starts where an earlier one ended; got {shift}."
            )
        if not isinstance(schedule, AnnealSchedule):
            raise TypeError(
                f"`schedule` must be a deepest.AnnealSchedule; got {type(schedule).__name__}."
            )
        if isinstance(warm, bool) or int(warm) != warm or not 1 <= warm <= schedule.n_beta:
            raise ValueError(
                f"`warm` must be an integer from 1 to the schedule's {schedule.n_beta} β's; "
                f"got {warm!r}."
            )
        if not np.isfinite(inflation) or inflation <= 0:
            raise ValueError(f"`inflation` must be positive; got {inflation}.")
        if later not in ("gauss_newton", "anneal"):
            raise ValueError(f'`later` must be "gauss_newton" or "anneal"; got {later!r}.')
        if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1:
            raise ValueError(f"`iterations` must be a positive integer; got {iterations!r}.")
        ends = np.arange(shift, n_obs, shift)
        starts = np.maximum(ends - window, 0)
        return cls(int(window), int(shift), int(warm), carry, later, int(iterations), starts, ends)


def _cut(data: Observations, values, mask, a: int, window: int) -> Observations:
    """The data of the observation times a…a + window, with `mask`."""
    rows = slice(a, a + window + 1)
    return Observations(data.times[rows], values[rows], data.observed, mask=mask[rows])


def _data_arrays(data: Observations):
    return data.times, data.values, data.mask


def _model_error(value, d: int) -> np.ndarray:
    if value is None:
        return np.zeros((d, d))
    q = np.asarray(value, float)
    if q.ndim == 0 or q.shape == (d,):
        q = np.diag(np.broadcast_to(q, (d,)))
    if q.shape != (d, d):
        raise ValueError(
            f"`model_error` must be a variance, {d} variances or a ({d}, {d}) covariance; got "
            f"shape {q.shape}."
        )
    if not np.all(np.isfinite(q)) or not np.allclose(q, q.T):
        raise ValueError("`model_error` must be finite and symmetric.")
    if np.any(np.linalg.eigvalsh(q) < 0):
        raise ValueError("`model_error` must be positive semidefinite.")
    return q


def _box(problem):
    """The box of z = (x, θ) as flat lower and upper bounds."""
    d, p = problem.dim, problem.banded_shape[2]
    lower, upper = np.full(d + p, -np.inf), np.full(d + p, np.inf)
    if problem.state_box is not None:
        lower[:d], upper[:d] = np.asarray(problem.state_box, float).T
    if problem.parameter_box:
        box = dict((n, (a, b)) for n, a, b in problem.parameter_box)
        start = d
        for name in problem.estimate:
            size = int(np.size(problem.values[name]))
            lo, hi = box.get(name, (-np.inf, np.inf))
            lower[start : start + size], upper[start : start + size] = lo, hi
            start += size
    return jnp.asarray(lower), jnp.asarray(upper)


def _warm_start(problem) -> bool:
    """Whether the first window starts warm, as a later one: from draws of a background
    on all its unknowns (x₀ and θ) that already constrains its path."""
    background = problem.background
    return background is not None and background.mean.size == problem.dim + problem.banded_shape[2]


def _starts(state, problem, k, a, lower, upper, key, n_paths):
    """The initial paths of window k: the forecast (the last window's estimate on the
    times they share, continued by the model), then draws from the background run by the
    model; a window from the first time (a = 0) starts from the last one's estimate and
    the usual draws, or (the first window) from the background's mean and draws."""
    draws_key = jr.fold_in(jr.fold_in(key, k), 1)
    d, spo = problem.dim, problem.steps_per_obs
    last = state.last_unknowns
    if a == 0 and last is not None:
        init = jax.vmap(problem.init)(jr.split(draws_key, n_paths))
        for name, value in last.items():
            init[name] = init[name].at[0].set(value)
        init["params"] = jax.tree.map(
            lambda u, v: u.at[0].set(v),
            init["params"],
            problem.from_banded(
                jnp.zeros((1, problem.banded_shape[1])), jnp.asarray(state.params[-1])
            )["params"],
        )
    else:
        mean, cov = problem.background.mean, problem.background.covariance
        chol = jnp.linalg.cholesky(cov)
        init = prior_paths(problem, problem.ts[0], mean, chol, draws_key, n_paths, lower, upper)
    if a > 0:
        # the forecast: the last window's estimate on the shared times, then the prior
        # mean's path
        shared = (state.last_window[1] - a) * spo
        moved = (a - state.last_window[0]) * spo
        path0 = init["path"][0].at[: shared + 1].set(last["path"][moved : moved + shared + 1])
        init = {**init, "path": init["path"].at[0].set(path0)}
        if "midpoints" in last:
            mid = last["midpoints"][moved : moved + shared]
            init["midpoints"] = init["midpoints"].at[0, :shared].set(mid)
    lo, hi = lower[None, None, :d], upper[None, None, :d]
    init["path"] = jnp.clip(init["path"], lo, hi)
    if "midpoints" in init:
        init["midpoints"] = jnp.clip(init["midpoints"], lo, hi)
    return init


class _State:
    """What the cycle carries and records, on the host (numpy)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    @classmethod
    def start(cls, times, d, p, plan, problem, n_paths):
        n_obs = times.size
        nan = np.full((n_obs, d), np.nan)
        return cls(
            k=0,
            plan=plan,
            n_paths=n_paths,
            times=times,
            forecast=nan.copy(),
            forecast_std=nan.copy(),
            analysis=nan.copy(),
            analysis_std=nan.copy(),
            analysis_z=np.full((n_obs, d + p), np.nan),
            analysis_cov=np.full((n_obs, d + p, d + p), np.nan),
            carry_z=np.full(d + p, np.nan),
            carry_cov=np.full((d + p, d + p), np.nan),
            smoothed=nan.copy(),
            smoothed_std=nan.copy(),
            params=np.zeros((0, p)),
            params_std=np.zeros((0, p)),
            action=[],
            codes=[],
            best=[],
            seconds=[],
            last_unknowns=None,
            last_window=None,
            stopped=None,
            interrupted=False,
            d=d,
            estimate=[[n, list(np.shape(problem.values[n]))] for n in problem.estimate],
        )

    def resume(self, path, fingerprint: dict) -> None:
        """Go on from a saved (partial) result of this same run."""
        done = CycleResult.load(path)
        theirs = {k: v for k, v in done.settings.items() if k != "estimate"}
        theirs.setdefault("later", "anneal")  # written before Gauss–Newton windows
        differ = [k for k in fingerprint if theirs.get(k) != fingerprint[k]]
        if differ:
            named = "; ".join(
                f"{k}: {theirs.get(k)!r} there, {fingerprint[k]!r} here" for k in differ
            )
            raise ValueError(
                f"{os.fspath(path)} holds a cycle of another run: its {', '.join(differ)} "
                f"differ from this call's ({named})."
            )
        n = done.n_windows
        for name in (
            "forecast", "forecast_std", "analysis", "analysis_std", "analysis_cov",
            "smoothed", "smoothed_std", "params", "params_std",
        ):  # fmt: skip
            setattr(self, name, np.array(getattr(done, name)))
        self.carry_z, self.carry_cov = np.array(done.background_mean), np.array(done.background_cov)
        self.analysis_z[:, : self.d] = self.analysis
        ends = done.window_ends
        self.analysis_z[ends, self.d :] = done.params
        warm = self.plan.warm
        self.action = [row if i == 0 else row[-warm:] for i, row in enumerate(done.action)]
        self.codes = list(codes_of(done.result))
        self.best = list(done.best)
        self.seconds = list(done.seconds)
        if n:
            self.last_unknowns = {"path": done.last_path}
            if done.last_midpoints is not None:
                self.last_unknowns["midpoints"] = done.last_midpoints
            self.last_window = (int(done.window_starts[-1]), int(ends[-1]))
        self.k = n

    def record(self, k, a, e, after, levels, best, mean, std, cov, fc, problem, first_row=None):
        """Window k's estimates, its action `levels` (β, path) and the last β's codes
        (`best` −1: a window without data, its background carried; then only the rows from
        `first_row` on are smoothed anew).

        Written whole or not at all: the estimates are read from the device first, and a
        Ctrl-C while they are written takes effect once the window is recorded."""
        mean, std, cov, fc = jax.device_get((mean, std, cov, fc))
        with Interruption(patient=True) as interrupt:
            self._record(k, a, e, after, levels, best, mean, std, cov, fc, problem, first_row)
        if interrupt.hit:
            raise KeyboardInterrupt

    def _record(self, k, a, e, after, levels, best, mean, std, cov, fc, problem, first_row):
        d, spo = self.d, problem.steps_per_obs
        path = np.asarray(mean["path"])
        obs = path[::spo]
        params = _flat_params(problem, mean)
        self.analysis[e] = path[(e - a) * spo]
        self.analysis_z[e] = np.concatenate([path[(e - a) * spo], params])
        self.analysis_cov[e] = np.asarray(cov[0])
        self.carry_z = np.concatenate([path[(after - a) * spo], params])
        self.carry_cov = np.asarray(cov[1])
        self.analysis_std[e] = np.sqrt(np.diagonal(self.analysis_cov[e])[:d])
        start = a if first_row is None else first_row
        self.smoothed[start : e + 1] = obs[start - a : e - a + 1]
        self.smoothed_std[start : e + 1] = np.asarray(std["path"])[::spo][start - a : e - a + 1]
        if fc is not None:
            fc_states, fc_std, _ = fc
            new = slice(e - self.plan.shift + 1, e + 1)
            self.forecast[new] = np.asarray(fc_states)[spo::spo]
            self.forecast_std[new] = np.asarray(fc_std)[spo::spo]
        self.params = np.concatenate([self.params, params[None]])
        self.params_std = np.concatenate([self.params_std, _flat_params(problem, std)[None]])
        self.action.append(levels[0])
        self.codes.append(levels[1])
        self.best.append(best)
        self.seconds.append(0.0)
        self.last_unknowns = {key: np.asarray(v) for key, v in mean.items() if key != "params"}
        self.last_window = (a, e)
        self.k = k + 1

    def result(self, fingerprint: dict, partial: bool) -> CycleResult:
        plan, n = self.plan, self.k
        n_beta = max((a.shape[0] for a in self.action), default=0)
        n_paths = self.n_paths
        action = np.full((n, n_beta, n_paths), np.nan)
        for i, levels in enumerate(self.action):
            action[i, n_beta - levels.shape[0] :] = levels
        stopped = self.stopped
        if stopped is None and self.interrupted and partial:
            stopped = "interrupted"
        last = self.last_unknowns or {}
        return CycleResult(
            times=self.times,
            forecast=self.forecast,
            forecast_std=self.forecast_std,
            analysis=self.analysis,
            analysis_std=self.analysis_std,
            analysis_cov=self.analysis_cov,
            background_mean=self.carry_z,
            background_cov=self.carry_cov,
            smoothed=self.smoothed,
            smoothed_std=self.smoothed_std,
            window_starts=plan.starts[:n],
            window_ends=plan.ends[:n],
            params=self.params,
            params_std=self.params_std,
            action=action,
            result=results_of(np.asarray(self.codes, np.int32).reshape(n, n_paths)),
            best=np.asarray(self.best, int),
            seconds=np.asarray(self.seconds, float),
            last_path=last.get("path", np.zeros((0, self.d))),
            last_midpoints=last.get("midpoints"),
            settings={**fingerprint, "estimate": self.estimate},
            partial=bool(partial),
            stopped=stopped,
        )


def _fingerprint(data, problem, plan, key, minimiser, inflation, added, schedule, n_paths) -> dict:
    def digest(*values) -> str:
        h = hashlib.sha256()
        for v in jax.tree.leaves(values):
            h.update(np.ascontiguousarray(np.asarray(v)).tobytes())
        return h.hexdigest()[:16]

    return {
        "problem": problem_digest(problem),
        "data": digest(data.times, data.values, data.mask),
        "window": plan.window,
        "shift": plan.shift,
        "warm": plan.warm,
        "carry": plan.carry,
        "later": plan.later if plan.later == "anneal" else f"gauss_newton × {plan.iterations}",
        "schedule": digest(schedule.rf),
        "key": digest(jr.key_data(key)),
        "minimiser": type(minimiser).__name__
        + repr({f.name: getattr(minimiser, f.name) for f in dataclasses.fields(minimiser)}),
        "n_paths": n_paths,
        "discretisation": f"{problem.discretisation!r} × {problem.steps_per_obs}",
        "unknowns": repr(
            (
                problem.estimate,
                problem.state_ranges,
                problem.param_ranges,
                problem.state_box,
                problem.parameter_box,
            )
        ),
        "inflation and model error": digest(inflation, added),
    }


def _names(result: RESULTS) -> list[str]:
    """The code names of the last β's paths."""
    return [name_of(c) for c in codes_of(result)[-1]]


def _bar(progress: bool, total: int, done: int):
    if progress:
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=done, desc="cycling", unit="window")
    return _NoBar()


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _anneal_checked(problem, schedule, init, n_paths, minimiser):
    """`anneal` from `init` without its checks, for a window whose problem has the kind and
    shapes of one `anneal` checked before (its compiled loop is reused): the checks cost
    more than a window's annealing."""
    settings = RunSettings.check(
        schedule, n_paths, None, None, None, 5000, minimiser, None, False, check_memory=False
    )
    problem = cast_floating(problem, settings.dtype)
    y0 = flatten_paths(minimiser, problem, cast_floating(init, settings.dtype))
    rf_table = jnp.asarray(schedule.rf, settings.dtype)
    factors = jnp.asarray(schedule.alpha ** np.arange(schedule.n_beta), settings.dtype)
    devices = jax.devices()[:1]
    state, stats, partial = run_loop(
        problem, y0, rf_table, factors, settings, schedule.n_beta, devices, None, 60.0, None
    )
    return settings.result(problem, schedule, state, stats, partial)


def _flat_params(problem, unknowns) -> np.ndarray:
    """The estimated parameters of `unknowns` flattened in `estimate` order (the banded
    layout's), on the host."""
    flat = [np.ravel(unknowns["params"][name]) for name in problem.estimate]
    return np.concatenate(flat) if flat else np.zeros(0)


def _grid(data: Observations, plan: "_Plan") -> tuple[float, ...] | None:
    """The first window's times, where the observation times are equally spaced (to
    rounding): every window's grid, for a model that does not read t."""
    times = np.asarray(data.times, float)
    steps = np.diff(times)
    if not np.allclose(steps, steps[0], rtol=1e-9, atol=0):
        return None
    return tuple(float(t) for t in times[: plan.window + 1])


def _chol(background: Background):
    factor = background.factor
    return jnp.diag(factor) if factor.ndim == 1 else factor


def _is_none(x) -> bool:
    return x is None
