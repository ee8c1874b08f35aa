"""Variational annealing of many initial paths at once, in one compiled program.

Design. Each path is a lane of a `jax.vmap`. A lane holds its own β index and its own
solver state (L-BFGS, or Levenberg–Marquardt: see `_minimisers.py`), and takes one step
(one evaluation of the action: line search and trust region run across steps, not inside
them) per iteration of a single `lax.while_loop`. The loop's step counter is passed to the
solver (`options["loop_step"]`); L-BFGS uses it as every lane's memory slot. When a lane's
minimisation at its β meets the stopping rule, the lane records its action levels, moves
to the next β (R_f ← α R_f) from its minimum and resets its solver, while the other lanes
carry on. So the loop runs for the largest
*total* number of steps of any path, not the sum over β of the slowest path at each β: a
path that is slow at one β is fast at another, and no lane waits for the batch to finish a
β. A lane that turns non-finite leaves at once. With several devices the lanes are split
between them by `jax.shard_map`, and each device runs its own loop.
"""

import collections
import enum
import itertools
import json
import os
import time
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

from ._minimiser._compact import StepInfo
from ._minimiser._lbfgs import LBFGS, AbstractMinimiser
from ._problem import AbstractProblem


class StopReason(enum.IntEnum):
    """Why the minimisation of a (β, path) stopped: `AnnealResult.stop_reason`'s codes.

    - `not_reached`: the path never reached this β (it turned non-finite earlier).
    - `converged_decrease`: the last accepted step and the decrease the minimiser's local
      model still predicts were both at most `ftol` relative to the action.
    - `converged_gradient`: the largest gradient entry fell to `gtol` times its value at
      the β's first point.
    - `max_steps`: `max_steps` evaluations without meeting either rule.
    - `stalled`: the line search (L-BFGS) or trust region (Levenberg–Marquardt) could make
      no further progress.
    - `non_finite`: the action or its gradient at the β's first point was not finite; the
      path stops here (its later levels are NaN).
    """

    not_reached = 0
    converged_decrease = 1
    converged_gradient = 2
    max_steps = 3
    stalled = 4
    non_finite = 5


_CONVERGED = (StopReason.converged_decrease, StopReason.converged_gradient)


class AnnealSchedule(eqx.Module):
    """The annealing schedule R_f = rf0 · α^β for β = 0, 1, …, n_beta − 1.

    **Arguments:**

    - `rf0`: the initial model weight (> 0), a scalar or one value per model component.
    - `alpha`: the growth factor α > 1.
    - `n_beta`: the number of β values (≥ 1).
    """

    rf0: Float[Array, "*dim"]
    alpha: float = eqx.field(static=True)
    n_beta: int = eqx.field(static=True)

    def __init__(self, rf0: ArrayLike, alpha: float, n_beta: int):
        rf0_np = np.asarray(rf0, dtype=float)
        if not np.all(np.isfinite(rf0_np)) or np.any(rf0_np <= 0):
            raise ValueError(f"`rf0` must be positive and finite; got {rf0}.")
        if not np.isfinite(alpha) or alpha <= 1:
            raise ValueError(f"`alpha` must be greater than 1; got {alpha}.")
        if int(n_beta) != n_beta or n_beta < 1:
            raise ValueError(f"`n_beta` must be a positive integer; got {n_beta}.")
        self.rf0 = rf0_np
        self.alpha = float(alpha)
        self.n_beta = int(n_beta)

    @property
    def rf(self) -> np.ndarray:
        """The model weights R_f, shape (n_beta,) or (n_beta, dim)."""
        beta = np.arange(self.n_beta).reshape((-1,) + (1,) * self.rf0.ndim)
        return self.rf0 * self.alpha**beta


class AnnealResult(eqx.Module):
    """The outcome of [`deepest.anneal`][].

    Arrays indexed `[beta, path]`: `action`, `measurement_error`, `model_error`,
    `stop_reason` (a [`deepest.StopReason`][] code), `converged` (stopped by the `ftol` or
    `gtol` rule), `iterations` (solver steps, one evaluation each, spent at that β).

    - `rf`: the model weights of the schedule, (n_beta,) or (n_beta, dim).
    - `finite`: (n_paths,) False for a path that turned non-finite (its later levels NaN).
    - `unknowns`: the final minimisers, a pytree with a leading n_paths axis.
    - `saved`: {β: unknowns at that β} for the β's listed in `save_betas`.
    - `views`: the problem's named views of `unknowns` (e.g. `paths`, `params`), also
      reachable as attributes: `result.paths`.
    - `stats`: run statistics: `run_time`, `compile_time` (seconds), `loop_steps` (loop
      iterations), `lane_steps` (useful steps summed over paths), `n_devices`.
    - `best`: the path with the lowest final action.
    """

    rf: np.ndarray
    action: np.ndarray
    measurement_error: np.ndarray
    model_error: np.ndarray
    stop_reason: np.ndarray
    iterations: np.ndarray
    unknowns: PyTree[np.ndarray]
    saved: dict[int, PyTree[np.ndarray]]
    views: dict
    stats: dict
    expected_action: float | None = None
    problem: AbstractProblem | None = None

    def __getattr__(self, name):
        views = self.__dict__.get("views", {})
        if name in views:
            return views[name]
        raise AttributeError(f"AnnealResult has no attribute {name!r}.")

    @property
    def n_paths(self) -> int:
        return self.action.shape[1]

    @property
    def converged(self) -> np.ndarray:
        """(n_beta, n_paths): the minimisation met the `ftol` or `gtol` rule."""
        return np.isin(self.stop_reason, [int(r) for r in _CONVERGED])

    @property
    def finite(self) -> np.ndarray:
        """(n_paths,): False for a path that turned non-finite (its later levels NaN)."""
        return ~np.any(self.stop_reason == StopReason.non_finite, axis=0)

    def stop_reasons(self) -> dict[str, int]:
        """How many (β, path) minimisations stopped for each [`deepest.StopReason`][]."""
        return {r.name: int(np.sum(self.stop_reason == r)) for r in StopReason}

    @property
    def best(self) -> int:
        """Index of the path with the lowest final action (non-finite ones excluded)."""
        final = np.where(np.isfinite(self.action[-1]), self.action[-1], np.inf)
        return int(np.argmin(final))

    def path_unknowns(self, i: int | None = None) -> PyTree[np.ndarray]:
        """The final unknowns of path `i` (default: `best`)."""
        i = self.best if i is None else i
        return jtu.tree_map(lambda a: a[i], self.unknowns)

    def predict(self, t_end: float, path: int | None = None, n_times: int = 200):
        """Integrate a path's final state and parameters past the window, to `t_end`.

        **Returns:** `(times, states)` from the window's end to `t_end`.
        """
        if self.problem is None or not hasattr(self.problem, "forecast"):
            raise ValueError("predict needs the problem (pass it to load_result) with a forecast.")
        return self.problem.forecast(self.path_unknowns(path), t_end, n_times)

    def model(self, i: int | None = None):
        """The model (e.g. trained network) of path `i` (default: `best`)."""
        if self.problem is None or not hasattr(self.problem, "to_model"):
            raise ValueError("This result's problem does not define a model of its unknowns.")
        return self.problem.to_model(self.path_unknowns(i))

    def summary(self) -> dict:
        """Per-β iteration statistics and the final levels, as plain numbers."""
        it = np.where(self.finite[None], self.iterations, 0)
        return {
            "n_paths": self.n_paths,
            "best": self.best,
            "final_action_best": float(self.action[-1, self.best]),
            "measurement_error_best": float(self.measurement_error[-1, self.best]),
            "mean_iterations_per_beta": it.mean(axis=1).tolist(),
            "max_iterations_per_beta": it.max(axis=1).tolist(),
            "converged_fraction": float(self.converged[:, self.finite].mean())
            if self.finite.any()
            else 0.0,
            "stop_reasons": self.stop_reasons(),
            **{k: v for k, v in self.stats.items()},
        }

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> str:
        """Write the result to `directory/result.npz` (the problem itself is not saved).

        Refuses to replace an existing result unless `overwrite=True`; the file is written
        to a temporary name first and then moved into place.
        """
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "result.npz")
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
        arrays = {
            name: getattr(self, name)
            for name in (
                "rf",
                "action",
                "measurement_error",
                "model_error",
                "stop_reason",
                "iterations",
            )
        }
        arrays.update(_flatten("unknowns", self.unknowns))
        arrays.update(_flatten("views", self.views))
        for beta, u in self.saved.items():
            arrays.update(_flatten(f"saved/{beta}", u))
        meta = {"stats": self.stats, "expected_action": self.expected_action}
        arrays["meta"] = np.asarray(json.dumps(meta))
        tmp = path + ".tmp.npz"
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
        return path


def _flatten(prefix: str, tree) -> dict[str, np.ndarray]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(f"{prefix}/{k}", v))
        return out
    return {prefix: np.asarray(tree)}


def _unflatten(arrays: dict[str, np.ndarray], prefix: str):
    tree: dict = {}
    for key, value in arrays.items():
        if not key.startswith(prefix + "/"):
            continue
        parts = key[len(prefix) + 1 :].split("/")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def _old_codes(arrays):
    """Stop reasons for a result saved before they were recorded: converged levels count as
    `converged_decrease`, the others as `max_steps`, a non-finite path's from its first
    NaN level on as `non_finite` then `not_reached`."""
    codes = np.where(arrays["converged"], StopReason.converged_decrease, StopReason.max_steps)
    nan = np.isnan(arrays["action"])
    first_nan = nan & (np.cumsum(nan, axis=0) == 1)
    codes = np.where(nan, StopReason.not_reached, codes)
    return np.where(first_nan, StopReason.non_finite, codes).astype(np.int32)


def load_result(directory: str | os.PathLike, problem: AbstractProblem | None = None):
    """Read an [`deepest.AnnealResult`][] written by `AnnealResult.save`.

    Pass the `problem` to use `predict` and `model` on the loaded result.
    """
    path = os.path.join(os.fspath(directory), "result.npz")
    with np.load(path) as f:
        arrays = dict(f)
    meta = json.loads(str(arrays.pop("meta")))
    saved = _unflatten(arrays, "saved")
    return AnnealResult(
        rf=arrays["rf"],
        action=arrays["action"],
        measurement_error=arrays["measurement_error"],
        model_error=arrays["model_error"],
        stop_reason=arrays["stop_reason"] if "stop_reason" in arrays else _old_codes(arrays),
        iterations=arrays["iterations"],
        unknowns=_unflatten(arrays, "unknowns"),
        saved={int(k): v for k, v in saved.items()},
        views=_unflatten(arrays, "views"),
        stats=meta["stats"],
        expected_action=meta["expected_action"],
        problem=problem,
    )


# -- the compiled loop -------------------------------------------------------------------


class _Lane(eqx.Module):
    """The state of one path (one lane of the vmap)."""

    y: Float[Array, " n"]
    state: PyTree
    beta: Int[Array, ""]
    steps: Int[Array, ""]
    action_before: Float[Array, ""]  # the action at the accepted point before the last
    grad_start: Float[Array, ""]  # max |∇A| at the β's first point
    action: Float[Array, " n_beta"]
    measurement_error: Float[Array, " n_beta"]
    model_error: Float[Array, " n_beta"]
    stop_reason: Int[Array, " n_beta"]
    iterations: Int[Array, " n_beta"]
    saved: Float[Array, "n_save n"]


class _Config(eqx.Module):
    n_beta: int = eqx.field(static=True)
    save_betas: tuple[int, ...] = eqx.field(static=True)
    ftol: float = eqx.field(static=True)
    gtol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    minimiser: AbstractMinimiser = eqx.field(static=True)
    progress: bool = eqx.field(static=True)


_BARS: dict[int, object] = {}
_bar_ids = itertools.count()
TRACES = {"anneal": 0}  # incremented when the loop is traced: tests check one compile


def _progress(bar_id, n_done, lowest_beta):
    bar = _BARS.get(int(bar_id))
    if bar is not None:
        bar.update(int(n_done))
        bar.set_postfix_str(f"lowest β running: {int(lowest_beta)}", refresh=False)


def _stop_reason(info: StepInfo, lane: _Lane, grad_start, steps, config: _Config):
    """The stopping rule of one step: a `StopReason` code, or −1 to go on."""
    f = info.action
    gmax = jnp.max(jnp.abs(info.grad))
    finite = jnp.isfinite(f) & jnp.isfinite(gmax)
    # Relative to the action without a floor, so that an action of 1e-7 is minimised as
    # well as one of 1e3; and only when the local model agrees that little is left.
    small = config.ftol * jnp.abs(f)
    decrease = info.accepted & ~info.first & (lane.action_before - f <= small)
    decrease = decrease & (info.predicted_decrease <= small)
    gradient = info.accepted & (gmax <= config.gtol * grad_start)
    reasons = [
        (info.first & ~finite, StopReason.non_finite),
        (gradient, StopReason.converged_gradient),
        (decrease, StopReason.converged_decrease),
        (info.failed, StopReason.stalled),
        (steps >= config.max_steps, StopReason.max_steps),
    ]
    code = jnp.array(-1, jnp.int32)
    for hit, reason in reversed(reasons):
        code = jnp.where(hit, jnp.int32(reason), code)
    return code


def _run_lanes(problem, y0, rf_table, factors, bar_id, config: _Config):
    """Anneal a batch of flat initial paths `y0` (n_lanes, n); one while loop."""
    TRACES["anneal"] += 1
    minimiser = config.minimiser
    dtype = y0.dtype
    n_beta = config.n_beta
    save_betas = jnp.asarray(config.save_betas or (-1,), dtype=jnp.int32)
    betas = jnp.arange(n_beta, dtype=jnp.int32)
    shared = minimiser.prepare(problem, y0, rf_table, factors)

    def init_lane(y):
        nan = jnp.full((n_beta,), jnp.nan, dtype)
        return _Lane(
            y=y,
            state=minimiser.init(problem, y, rf_table[0], shared),
            beta=jnp.array(0, jnp.int32),
            steps=jnp.array(0, jnp.int32),
            action_before=jnp.array(jnp.inf, dtype),
            grad_start=jnp.array(jnp.inf, dtype),
            action=nan,
            measurement_error=nan,
            model_error=nan,
            stop_reason=jnp.zeros((n_beta,), jnp.int32),
            iterations=jnp.zeros((n_beta,), jnp.int32),
            saved=jnp.full((save_betas.shape[0],) + y.shape, jnp.nan, dtype),
        )

    def step_lane(lane: _Lane, loop_step):
        # A finished lane keeps stepping with the batch, but writes nothing any more.
        active = lane.beta < n_beta
        beta = jnp.minimum(lane.beta, n_beta - 1)
        y, state, info = minimiser.step(
            problem, lane.y, rf_table[beta], beta, loop_step, lane.state, shared
        )
        grad_start = jnp.where(info.first, jnp.max(jnp.abs(info.grad)), lane.grad_start)
        steps = lane.steps + 1
        code = _stop_reason(info, lane, grad_start, steps, config)
        done = active & (code >= 0)
        bad = done & (code == StopReason.non_finite)
        at_beta = (betas == beta) & done
        next_beta = jnp.where(bad, n_beta, beta + 1)
        following = jnp.minimum(next_beta, n_beta - 1)
        meas, model = info.errors

        def record(new, old):
            return jnp.where(at_beta, jnp.where(bad, jnp.nan, new), old)

        new = _Lane(
            y=jnp.where(active, y, lane.y),
            state=minimiser.restart(
                problem, done, y, rf_table[following], following, state, shared
            ),
            beta=jnp.where(done, next_beta, lane.beta),
            steps=jnp.where(done, 0, steps),
            action_before=jnp.where(
                done, jnp.inf, jnp.where(info.accepted, info.action, lane.action_before)
            ),
            grad_start=grad_start,
            action=record(info.action, lane.action),
            measurement_error=record(meas, lane.measurement_error),
            model_error=record(model, lane.model_error),
            stop_reason=jnp.where(at_beta, code, lane.stop_reason),
            iterations=jnp.where(at_beta, steps, lane.iterations),
            saved=jnp.where(((save_betas == beta) & done & ~bad)[:, None], y[None], lane.saved),
        )
        return new, done, active

    # A solver state may hold non-arrays (e.g. a jaxpr): only the arrays are carried
    # through the loop, the rest is fixed at its initial value.
    lanes, static = eqx.partition(eqx.filter_vmap(init_lane)(y0), eqx.is_array)

    def cond(carry):
        lanes, loop_steps, _ = carry
        return jnp.any(lanes.beta < n_beta) & (loop_steps < n_beta * config.max_steps)

    def body(carry):
        lanes, loop_steps, lane_steps = carry
        lanes, done, active = eqx.filter_vmap(lambda lane: step_lane(lane, loop_steps))(
            eqx.combine(lanes, static)
        )
        lanes = eqx.filter(lanes, eqx.is_array)
        if config.progress:
            n_done = jnp.sum(done)
            lowest = jnp.min(lanes.beta)
            jax.lax.cond(
                n_done > 0,
                lambda: jax.debug.callback(_progress, bar_id, n_done, lowest),
                lambda: None,
            )
        return lanes, loop_steps + 1, lane_steps + jnp.sum(active, dtype=jnp.int32)

    zero = jnp.array(0, jnp.int32)
    lanes, loop_steps, lane_steps = jax.lax.while_loop(cond, body, (lanes, zero, zero))
    records = (
        lanes.y,
        lanes.action,
        lanes.measurement_error,
        lanes.model_error,
        lanes.stop_reason,
        lanes.iterations,
        lanes.saved,
    )
    return records, loop_steps[None], lane_steps[None]


def _resolve_dtype(dtype):
    dtype = jnp.dtype(jnp.float64 if dtype is None else dtype)
    if dtype == jnp.float64 and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            "float64 was asked for but JAX's x64 mode is off. Turn it on at the start of your "
            "program with `jax.config.update('jax_enable_x64', True)`, or pass "
            "dtype=jnp.float32."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"`dtype` must be a floating-point type; got {dtype}.")
    return dtype


def _cast(tree, dtype):
    return jtu.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


def _tolerances(dtype, ftol, gtol):
    # The polish test of tests/test_anneal.py fixes these: at the defaults a tight scipy
    # polish of a converged level lowers it by < 1e-6 relative in float64 and < 1e-3 in
    # float32, where rounding of an action summed over ~10⁴ terms allows no less.
    defaults = {jnp.dtype(jnp.float64): (1e-10, 1e-9), jnp.dtype(jnp.float32): (1e-5, 1e-4)}
    default_f, default_g = defaults.get(jnp.dtype(dtype), defaults[jnp.dtype(jnp.float32)])
    ftol = default_f if ftol is None else float(ftol)
    gtol = default_g if gtol is None else float(gtol)
    if not (ftol >= 0 and gtol >= 0):
        raise ValueError(f"`ftol` and `gtol` must be non-negative; got {ftol}, {gtol}.")
    return ftol, gtol


def _check_init(problem, init, n_paths, dtype):
    """`init` as the problem's unknowns with a leading n_paths axis, or a clear error."""
    template = jax.eval_shape(problem.init, jr.key(0))
    try:
        unknowns = jtu.tree_map(jnp.asarray, init)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`init` must be a pytree of arrays: {e}") from None
    if jtu.tree_structure(unknowns) != jtu.tree_structure(template):
        raise ValueError(
            f"`init` must have the structure of `problem.init(key)` with a leading n_paths "
            f"axis: {jtu.tree_structure(template)}; got {jtu.tree_structure(unknowns)}."
        )
    paths = jtu.tree_flatten_with_path(unknowns)[0]
    for (where, leaf), expected in zip(paths, jtu.tree_leaves(template)):
        want = (n_paths,) + tuple(expected.shape)
        if leaf.shape != want:
            raise ValueError(
                f"`init{jtu.keystr(where)}` must have shape {want} (n_paths, then the shape "
                f"`problem.init(key)` gives); got {leaf.shape}."
            )
    return _cast(unknowns, dtype)


def anneal(
    problem: AbstractProblem,
    schedule: AnnealSchedule,
    n_paths: int,
    key: PRNGKeyArray | None = None,
    *,
    save_betas: Sequence[int] | None = None,
    init: PyTree[ArrayLike] | None = None,
    ftol: float | None = None,
    gtol: float | None = None,
    max_steps: int = 5000,
    minimiser: AbstractMinimiser | None = None,
    dtype=None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    throw: bool = True,
) -> AnnealResult:
    r"""Variational annealing: minimise `problem.action(X, R_f)` for R_f = rf0·α^β, β = 0…

    Each β is minimised by the `minimiser` (L-BFGS by default) from the previous β's
    minimum; the first from `problem.init` draws (or `init`). All `n_paths` paths run
    together in one compiled program, each with its own β (see the module notes), split
    over `devices`. Each step is one evaluation of the action A. The minimisation of a β
    stops (`result.stop_reason`, a [`deepest.StopReason`][]) when

    - the last accepted step lowered A by at most `ftol`·|A| **and** the decrease the
      minimiser's local model still predicts (½ gᵀHg for L-BFGS) is at most `ftol`·|A|:
      relative to A itself, so that an action of 1e-7 is minimised as well as one of 1e3;
    - or max|∇A| ≤ `gtol` · max|∇A| at the β's first point;
    - or the line search / trust region stalls, or after `max_steps` evaluations (then
      `converged` is False).

    **Arguments:**

    - `problem`: an [`deepest.AbstractProblem`][], e.g. [`deepest.Assimilation`][].
    - `schedule`: an [`deepest.AnnealSchedule`][].
    - `n_paths`: the number of initial paths.
    - `key`: PRNG key for the initial paths (the same key gives the same result); not
      needed when `init` is given.
    - `save_betas`: β indices whose minimisers are kept in `result.saved`.
    - `init`: initial unknowns instead of the draws: the structure of `problem.init(key)`
      with a leading `n_paths` axis on every leaf. For [`deepest.Assimilation`][]:
      `{"path": (n_paths, N_model, D), "params": {name: (n_paths, …)}}` (and
      `"midpoints": (n_paths, N_model − 1, D)` for Simpson–Hermite), e.g.
      `init = jax.vmap(problem.init)(jax.random.split(key, n_paths))`, then edited.
    - `ftol`, `gtol`: the tolerances above; default 1e-10 and 1e-9 in float64, 1e-5 and
      1e-4 in float32.
    - `max_steps`: the most evaluations per β and path.
    - `minimiser`: the minimiser of each β: [`deepest.LBFGS`][] (default, any problem)
      or [`deepest.LevenbergMarquardt`][] (problems with banded residuals, e.g.
      [`deepest.Assimilation`][]: far fewer steps, each a block-banded linear solve).
    - `dtype`: float64 (default; needs x64 on) or float32.
    - `devices`: devices to split the paths over (default: all of the default backend).
    - `progress`: show a tqdm bar of finished (path, β) minimisations.
    - `throw`: raise if every path turns non-finite (else return the result, whose
      `finite` flags say so).

    **Returns:** an [`deepest.AnnealResult`][].
    """
    if not isinstance(problem, AbstractProblem):
        raise TypeError(f"`problem` must be a deepest.AbstractProblem; got {type(problem)}.")
    if not isinstance(schedule, AnnealSchedule):
        raise TypeError("`schedule` must be a deepest.AnnealSchedule.")
    if int(n_paths) != n_paths or n_paths < 1:
        raise ValueError(f"`n_paths` must be a positive integer; got {n_paths}.")
    if int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive integer; got {max_steps}.")
    if key is None and init is None:
        raise ValueError("Pass a PRNG `key` for the initial paths, or the paths as `init`.")
    minimiser = LBFGS() if minimiser is None else minimiser
    if not isinstance(minimiser, AbstractMinimiser):
        raise TypeError(
            f"`minimiser` must be deepest.LBFGS() or deepest.LevenbergMarquardt(); "
            f"got {type(minimiser).__name__}."
        )
    minimiser.check(problem)
    n_paths = int(n_paths)
    problem.check_rf(schedule.rf0)
    save_betas = tuple(sorted({int(b) for b in (save_betas or ())}))
    if any(b < 0 or b >= schedule.n_beta for b in save_betas):
        raise ValueError(f"`save_betas` must lie in [0, {schedule.n_beta}); got {save_betas}.")
    dtype = _resolve_dtype(dtype)
    ftol, gtol = _tolerances(dtype, ftol, gtol)

    problem = _cast(problem, dtype)
    if init is None:
        unknowns = jax.jit(jax.vmap(problem.init))(jr.split(key, n_paths))
    else:
        unknowns = _check_init(problem, init, n_paths, dtype)
    y0 = jax.vmap(lambda u: minimiser.flatten(problem, u))(unknowns).astype(dtype)

    def unravel(y):
        return minimiser.unflatten(problem, y)

    rf_table = jnp.asarray(schedule.rf, dtype)
    factors = jnp.asarray(schedule.alpha ** np.arange(schedule.n_beta), dtype)

    devices = list(jax.devices() if devices is None else devices)
    n_dev = len(devices)
    padded = -(-n_paths // n_dev) * n_dev
    if padded > n_paths:
        y0 = jnp.concatenate([y0, jnp.repeat(y0[-1:], padded - n_paths, axis=0)])

    config = _Config(
        n_beta=schedule.n_beta,
        save_betas=save_betas,
        ftol=ftol,
        gtol=gtol,
        max_steps=int(max_steps),
        minimiser=minimiser,
        progress=bool(progress),
    )
    params, static = eqx.partition(problem, eqx.is_array)

    def run(params, y0, rf_table, factors, bar_id):
        prob = eqx.combine(params, static)
        return _run_lanes(prob, y0, rf_table, factors, bar_id, config)

    if n_dev > 1:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        mesh = Mesh(np.asarray(devices), ("paths",))
        run = jax.shard_map(
            run,
            mesh=mesh,
            in_specs=(P(), P("paths"), P(), P(), P()),
            out_specs=P("paths"),
            check_vma=False,
        )
        y0 = jax.device_put(y0, NamedSharding(mesh, P("paths")))

    bar_id = next(_bar_ids)
    start = time.perf_counter()
    compiled = _compile(run, static, config, n_dev, params, y0, rf_table, factors, bar_id)
    compile_time = time.perf_counter() - start
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_paths * schedule.n_beta, desc="annealing", unit="min")
        _BARS[bar_id] = bar
    try:
        start = time.perf_counter()
        out = compiled(params, y0, rf_table, factors, jnp.asarray(bar_id))
        out = jax.block_until_ready(out)
        run_time = time.perf_counter() - start
    finally:
        if bar is not None:
            bar.close()
            _BARS.pop(bar_id, None)
    (y, action, meas, model, stop_reason, iterations, saved), loop_steps, lane_steps = (
        jax.device_get(out)
    )
    cut = slice(0, n_paths)
    final = jax.vmap(unravel)(jnp.asarray(y[cut]))
    saved_trees = {
        b: jax.device_get(jax.vmap(unravel)(jnp.asarray(saved[cut, j])))
        for j, b in enumerate(save_betas)
    }
    stats = {
        "run_time": run_time,
        "compile_time": compile_time,
        "loop_steps": int(np.max(loop_steps)),
        "lane_steps": int(np.sum(iterations[cut])),
        "n_devices": n_dev,
    }
    result = AnnealResult(
        rf=np.asarray(schedule.rf),
        action=action[cut].T,
        measurement_error=meas[cut].T,
        model_error=model[cut].T,
        stop_reason=stop_reason[cut].T,
        iterations=iterations[cut].T,
        unknowns=jax.device_get(final),
        saved=saved_trees,
        views=jax.device_get(problem.views(final)),
        stats=stats,
        expected_action=problem.expected_action,
        problem=problem,
    )
    if throw and not result.finite.any():
        counts = ", ".join(f"{k}: {v}" for k, v in result.stop_reasons().items() if v)
        raise RuntimeError(
            f"Every path turned non-finite ({counts}): check the model, the data and rf0, "
            f"or pass throw=False to get the result with its flags."
        )
    return result


_COMPILED: collections.OrderedDict = collections.OrderedDict()
_COMPILED_MAX = 8  # compiled annealing programs kept (least recently used dropped)


def _compile(run, static, config, n_dev, params, y0, rf_table, factors, bar_id):
    """Compile the annealing loop once per problem structure, shapes and settings."""
    spec = jtu.tree_map(lambda a: (a.shape, a.dtype), (params, y0, rf_table, factors))
    leaves, treedef = jtu.tree_flatten(static)
    key = (tuple(leaves), treedef, config, n_dev, jtu.tree_structure(params), str(spec))
    try:
        _COMPILED.move_to_end(key)
        return _COMPILED[key]
    except (KeyError, TypeError):
        pass
    compiled = jax.jit(run).lower(params, y0, rf_table, factors, jnp.asarray(bar_id)).compile()
    try:
        _COMPILED[key] = compiled
    except TypeError:
        return compiled
    while len(_COMPILED) > _COMPILED_MAX:  # each holds its executable's memory
        _COMPILED.popitem(last=False)
    return compiled
