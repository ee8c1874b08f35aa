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
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from ._minimisers import LBFGS, AbstractMinimiser
from ._problem import AbstractProblem


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
    `converged`, `iterations` (solver steps, one evaluation each, spent at that β).

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
    converged: np.ndarray
    iterations: np.ndarray
    finite: np.ndarray
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
                "converged",
                "iterations",
                "finite",
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
        converged=arrays["converged"],
        iterations=arrays["iterations"],
        finite=arrays["finite"],
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
    rejections: Int[Array, ""]
    f_accepted: Float[Array, ""]
    action: Float[Array, " n_beta"]
    measurement_error: Float[Array, " n_beta"]
    model_error: Float[Array, " n_beta"]
    converged: Bool[Array, " n_beta"]
    iterations: Int[Array, " n_beta"]
    finite: Bool[Array, ""]
    saved: Float[Array, "n_save n"]


class _Config(eqx.Module):
    n_beta: int = eqx.field(static=True)
    save_betas: tuple[int, ...] = eqx.field(static=True)
    ftol: float = eqx.field(static=True)
    gtol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    max_rejections: int = eqx.field(static=True)
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


def _run_lanes(problem, y0, rf_table, bar_id, config: _Config):
    """Anneal a batch of flat initial paths `y0` (n_lanes, n); one while loop."""
    TRACES["anneal"] += 1
    minimiser = config.minimiser
    solver, fn = minimiser.solver_and_fn(problem, y0[0])
    dtype = y0.dtype
    n_beta = config.n_beta
    f_struct, aux_struct = jax.eval_shape(fn, y0[0], rf_table[0])
    f_struct = jtu.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), f_struct)
    tags = frozenset()

    def fresh_state(y, rf):
        return solver.init(fn, y, rf, {}, f_struct, aux_struct, tags)

    save_betas = jnp.asarray(config.save_betas or (-1,), dtype=jnp.int32)

    def init_lane(y):
        nan = jnp.full((n_beta,), jnp.nan, dtype)
        return _Lane(
            y=y,
            state=fresh_state(y, rf_table[0]),
            beta=jnp.array(0, jnp.int32),
            steps=jnp.array(0, jnp.int32),
            rejections=jnp.array(0, jnp.int32),
            f_accepted=jnp.array(jnp.inf, dtype),
            action=nan,
            measurement_error=nan,
            model_error=nan,
            converged=jnp.zeros((n_beta,), bool),
            iterations=jnp.zeros((n_beta,), jnp.int32),
            finite=jnp.array(True),
            saved=jnp.full((save_betas.shape[0],) + y.shape, jnp.nan, dtype),
        )

    def reset(done, fresh, state):
        # Only the small leaves are reset. The (history_length, n) L-BFGS memories are
        # left as they are: zeroing the stored inner products 1/⟨s, y⟩ (small leaves)
        # removes their pairs from the two-loop recursion, and copying them every
        # step would cost more than the gradient. (Levenberg–Marquardt's first step
        # after a reset is accepted unconditionally and recomputes its blocks.)
        return jtu.tree_map(
            lambda a, b: jnp.where(done, a, b) if eqx.is_array(a) and a.ndim <= 1 else b,
            fresh,
            state,
        )

    def step_lane(lane: _Lane, loop_step):
        # A finished lane keeps stepping with the batch, but writes nothing any more.
        active = lane.beta < n_beta
        beta = jnp.minimum(lane.beta, n_beta - 1)
        rf = rf_table[beta]
        y, state, _ = solver.step(fn, lane.y, rf, {"loop_step": loop_step}, lane.state, tags)
        accepted = state.num_accepted_steps > lane.state.num_accepted_steps
        f, grad = minimiser.action_and_grad(state)
        meas, model = state.aux
        finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(grad)) & jnp.all(jnp.isfinite(y))
        bad = active & accepted & ~finite
        # scipy's L-BFGS-B rule: relative decrease of f, or the largest gradient entry.
        scale = jnp.maximum(jnp.maximum(jnp.abs(lane.f_accepted), jnp.abs(f)), 1.0)
        f_conv = (
            accepted & jnp.isfinite(lane.f_accepted) & (lane.f_accepted - f <= config.ftol * scale)
        )
        g_conv = accepted & (jnp.max(jnp.abs(grad)) <= config.gtol)
        converged = (f_conv | g_conv) & finite
        steps = lane.steps + 1
        rejections = jnp.where(accepted, 0, lane.rejections + 1)
        stalled = (rejections >= config.max_rejections) | (state.result != optx.RESULTS.successful)
        done = active & (converged | bad | stalled | (steps >= config.max_steps))
        at_beta = (jnp.arange(n_beta, dtype=jnp.int32) == beta) & done
        later = jnp.arange(n_beta, dtype=jnp.int32) >= beta
        next_beta = jnp.where(bad, n_beta, beta + 1)

        def record(new, old):
            return jnp.where(at_beta, jnp.where(bad, jnp.nan, new), old)

        new = _Lane(
            y=jnp.where(active, y, lane.y),
            state=reset(done, fresh_state(y, rf_table[jnp.minimum(next_beta, n_beta - 1)]), state),
            beta=jnp.where(done, next_beta, lane.beta),
            steps=jnp.where(done, 0, steps),
            rejections=jnp.where(done, 0, rejections),
            f_accepted=jnp.where(done, jnp.inf, jnp.where(accepted, f, lane.f_accepted)),
            action=jnp.where(bad & later, jnp.nan, record(f, lane.action)),
            measurement_error=jnp.where(bad & later, jnp.nan, record(meas, lane.measurement_error)),
            model_error=jnp.where(bad & later, jnp.nan, record(model, lane.model_error)),
            converged=jnp.where(at_beta, converged, lane.converged),
            iterations=jnp.where(at_beta, steps, lane.iterations),
            finite=lane.finite & ~bad,
            saved=jnp.where(((save_betas == beta) & done & ~bad)[:, None], y[None], lane.saved),
        )
        return new, done, active

    # The L-BFGS state holds a jaxpr (its inverse-Hessian operator): only the arrays are
    # carried through the loop, the rest is fixed at its initial value.
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
        lanes.converged,
        lanes.iterations,
        lanes.finite,
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


def anneal(
    problem: AbstractProblem,
    schedule: AnnealSchedule,
    n_paths: int,
    key: PRNGKeyArray,
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
) -> AnnealResult:
    r"""Variational annealing: minimise `problem.action(X, R_f)` for R_f = rf0·α^β, β = 0…

    Each β is minimised by the `minimiser` (L-BFGS by default) from the previous β's
    minimum; the first from `problem.init` draws (or `init`). All `n_paths` paths run
    together in one compiled program, each with its own β (see the module notes), split
    over `devices`. A minimisation stops, as scipy's L-BFGS-B does, when
    (f_k − f_{k+1})/max(|f_k|, |f_{k+1}|, 1) ≤ ftol or max|∇f| ≤ gtol, or after
    `max_steps` steps, each one evaluation of the action (then `converged` is False).

    **Arguments:**

    - `problem`: an [`deepest.AbstractProblem`][], e.g. [`deepest.Assimilation`][].
    - `schedule`: an [`deepest.AnnealSchedule`][].
    - `n_paths`: the number of initial paths.
    - `key`: PRNG key for the initial paths (the same key gives the same result).
    - `save_betas`: β indices whose minimisers are kept in `result.saved`.
    - `init`: optional initial unknowns with a leading `n_paths` axis (replaces the draws).
    - `ftol`, `gtol`: tolerances; default 1e-8 in float64 (varanneal's), 1e-6 in float32.
    - `max_steps`: the most evaluations per β and path.
    - `minimiser`: the minimiser of each β: [`deepest.LBFGS`][] (default, any problem)
      or [`deepest.LevenbergMarquardt`][] (problems with banded residuals, e.g.
      [`deepest.Assimilation`][]: far fewer steps, each a block-banded linear solve).
    - `dtype`: float64 (default; needs x64 on) or float32.
    - `devices`: devices to split the paths over (default: all of the default backend).
    - `progress`: show a tqdm bar of finished (path, β) minimisations.

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
    eps = float(jnp.finfo(dtype).eps)
    # float64: varanneal's 1e-8. float32: 1e-6, about 10 eps, the least that rounding allows.
    default_tol = 1e-8 if dtype == jnp.float64 else float(10 ** np.ceil(np.log10(10 * eps)))
    ftol = default_tol if ftol is None else float(ftol)
    gtol = default_tol if gtol is None else float(gtol)
    if ftol < 0 or gtol < 0:
        raise ValueError("`ftol` and `gtol` must be non-negative.")

    problem = _cast(problem, dtype)
    if init is None:
        unknowns = jax.jit(jax.vmap(problem.init))(jr.split(key, n_paths))
    else:
        unknowns = _cast(jtu.tree_map(jnp.asarray, init), dtype)
        sizes = {a.shape[0] for a in jtu.tree_leaves(unknowns)}
        if sizes != {n_paths}:
            raise ValueError(f"Every leaf of `init` needs a leading axis of n_paths={n_paths}.")
        expected = jtu.tree_structure(jax.eval_shape(problem.init, key))
        if jtu.tree_structure(unknowns) != expected:
            raise ValueError("`init` must have the structure of `problem.init(key)`.")
    y0 = jax.vmap(lambda u: minimiser.flatten(problem, u))(unknowns).astype(dtype)

    def unravel(y):
        return minimiser.unflatten(problem, y)

    rf_table = jnp.asarray(schedule.rf, dtype)

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
        max_rejections=30,
        minimiser=minimiser,
        progress=bool(progress),
    )
    params, static = eqx.partition(problem, eqx.is_array)

    def run(params, y0, rf_table, bar_id):
        prob = eqx.combine(params, static)
        return _run_lanes(prob, y0, rf_table, bar_id, config)

    if n_dev > 1:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        mesh = Mesh(np.asarray(devices), ("paths",))
        run = jax.shard_map(
            run,
            mesh=mesh,
            in_specs=(P(), P("paths"), P(), P()),
            out_specs=P("paths"),
            check_vma=False,
        )
        y0 = jax.device_put(y0, NamedSharding(mesh, P("paths")))

    bar_id = next(_bar_ids)
    start = time.perf_counter()
    compiled = _compile(run, static, config, n_dev, params, y0, rf_table, bar_id)
    compile_time = time.perf_counter() - start
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_paths * schedule.n_beta, desc="annealing", unit="min")
        _BARS[bar_id] = bar
    try:
        start = time.perf_counter()
        out = compiled(params, y0, rf_table, jnp.asarray(bar_id))
        out = jax.block_until_ready(out)
        run_time = time.perf_counter() - start
    finally:
        if bar is not None:
            bar.close()
            _BARS.pop(bar_id, None)
    (y, action, meas, model, converged, iterations, finite, saved), loop_steps, lane_steps = (
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
        "lane_steps": int(np.sum(np.where(finite[cut, None], iterations[cut], 0))),
        "n_devices": n_dev,
    }
    return AnnealResult(
        rf=np.asarray(schedule.rf),
        action=action[cut].T,
        measurement_error=meas[cut].T,
        model_error=model[cut].T,
        converged=converged[cut].T,
        iterations=iterations[cut].T,
        finite=finite[cut],
        unknowns=jax.device_get(final),
        saved=saved_trees,
        views=jax.device_get(problem.views(final)),
        stats=stats,
        expected_action=problem.expected_action,
        problem=problem,
    )


_COMPILED: dict = {}


def _compile(run, static, config, n_dev, params, y0, rf_table, bar_id):
    """Compile the annealing loop once per problem structure, shapes and settings."""
    spec = jtu.tree_map(lambda a: (a.shape, a.dtype), (params, y0, rf_table))
    leaves, treedef = jtu.tree_flatten(static)
    key = (tuple(leaves), treedef, config, n_dev, jtu.tree_structure(params), str(spec))
    try:
        return _COMPILED[key]
    except (KeyError, TypeError):
        pass
    compiled = jax.jit(run).lower(params, y0, rf_table, jnp.asarray(bar_id)).compile()
    try:
        _COMPILED[key] = compiled
    except TypeError:
        pass
    return compiled
