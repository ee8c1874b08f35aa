"""The entry of variational annealing: [`deepest.anneal`][], with its checks."""

import os
import signal
import threading
import time
import warnings
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray, PyTree

from ._checkpoint import fingerprints, load_checkpoint, problem_digest, save_checkpoint
from ._hosts import Hosts
from ._loop import LoopConfig, advance_loop, init_loop, loop_finished, loop_records
from ._minimiser import LBFGS, AbstractMinimiser
from ._problem import AbstractProblem
from ._progress import AbstractProgressMeter, progress_meter
from ._schedule import AnnealSchedule
from ._solution import AnnealResult


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


# Compiled once per problem structure and shapes (not once per call, as a fresh
# `jax.jit(jax.vmap(problem.init))` would be).
@eqx.filter_jit
def _draw(problem, keys):
    return jax.vmap(problem.init)(keys)


@eqx.filter_jit
def _flatten(minimiser, problem, unknowns):
    return jax.vmap(lambda u: minimiser.flatten(problem, u))(unknowns)


@eqx.filter_jit
def _unflatten(minimiser, problem, y):
    return jax.vmap(lambda y: minimiser.unflatten(problem, y))(y)


@eqx.filter_jit
def _initial_actions(minimiser, problem, y0, rf0):
    return jax.vmap(lambda y: problem.action(minimiser.unflatten(problem, y), rf0))(y0)


def _check_initial_actions(minimiser, problem, y0, rf0):
    """Report paths whose action is not finite at their start, before any annealing: an
    error if every path's is (the model returns NaN or inf there), else a warning."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(_initial_actions(minimiser, problem, y0, rf0))))
    if bad.size == len(y0):
        raise ValueError(
            "The action is not finite at any initial path: the model returns NaN or inf "
            "there (or the data hold NaN). Check the model at states in `state_range`, or "
            "pass finite starting paths as `init`."
        )
    if bad.size:
        warnings.warn(
            f"The action is not finite at the initial paths {bad.tolist()}: the model returns "
            "NaN or inf there; those paths stop at β = 0 (stop reason non_finite).",
            stacklevel=3,
        )


class _Settings(eqx.Module):
    """The settings of a run that every path (and every point of a sweep) shares."""

    n_paths: int
    save_betas: tuple[int, ...]
    ftol: float
    gtol: float
    max_steps: int
    minimiser: AbstractMinimiser
    dtype: np.dtype
    meter: AbstractProgressMeter

    @staticmethod
    def check(schedule, n_paths, save_betas, ftol, gtol, max_steps, minimiser, dtype, progress):
        if not isinstance(schedule, AnnealSchedule):
            raise TypeError("`schedule` must be a deepest.AnnealSchedule.")
        if int(n_paths) != n_paths or n_paths < 1:
            raise ValueError(f"`n_paths` must be a positive integer; got {n_paths}.")
        if int(max_steps) != max_steps or max_steps < 1:
            raise ValueError(f"`max_steps` must be a positive integer; got {max_steps}.")
        meter = progress_meter(progress)
        minimiser = LBFGS() if minimiser is None else minimiser
        if not isinstance(minimiser, AbstractMinimiser):
            raise TypeError(
                f"`minimiser` must be deepest.LBFGS() or deepest.LevenbergMarquardt(); "
                f"got {type(minimiser).__name__}."
            )
        save_betas = tuple(sorted({int(b) for b in (save_betas or ())}))
        if any(b < 0 or b >= schedule.n_beta for b in save_betas):
            raise ValueError(f"`save_betas` must lie in [0, {schedule.n_beta}); got {save_betas}.")
        dtype = _resolve_dtype(dtype)
        ftol, gtol = _tolerances(dtype, ftol, gtol)
        return _Settings(
            int(n_paths), save_betas, ftol, gtol, int(max_steps), minimiser, dtype, meter
        )

    def loop_config(self, n_beta: int) -> LoopConfig:
        return LoopConfig(
            n_beta=n_beta,
            save_betas=self.save_betas,
            ftol=self.ftol,
            gtol=self.gtol,
            max_steps=self.max_steps,
            minimiser=self.minimiser,
            progress_meter=self.meter,
        )


def _check_checkpointing(checkpoint_every, resume):
    if not (float(checkpoint_every) > 0):
        raise ValueError(f"`checkpoint_every` must be positive (seconds); got {checkpoint_every}.")
    if resume is not None and not os.path.isdir(resume):
        raise ValueError(f"`resume`: {resume} is not a folder.")


def _start(problem, schedule, key, init, settings: _Settings):
    """Check one problem against its schedule and settings; cast it; draw (or check) its
    initial paths and flatten them. **Returns:** `(problem, y0, rf_table, factors)`."""
    if not isinstance(problem, AbstractProblem):
        raise TypeError(f"`problem` must be a deepest.AbstractProblem; got {type(problem)}.")
    settings.minimiser.check(problem)
    problem.check_rf(schedule.rf0)
    dtype, minimiser = settings.dtype, settings.minimiser
    problem = _cast(problem, dtype)
    if init is None:
        unknowns = _draw(problem, jr.split(key, settings.n_paths))
    else:
        unknowns = _check_init(problem, init, settings.n_paths, dtype)
    y0 = _flatten(minimiser, problem, unknowns).astype(dtype)
    _check_initial_actions(minimiser, problem, y0, jnp.asarray(schedule.rf[0], dtype))
    rf_table = jnp.asarray(schedule.rf, dtype)
    factors = jnp.asarray(schedule.alpha ** np.arange(schedule.n_beta), dtype)
    return problem, y0, rf_table, factors


def _result(problem, schedule, settings: _Settings, state, stats: dict, partial: bool):
    """The [`deepest.AnnealResult`][] of one problem's loop `state` (lanes past `n_paths`
    are padding)."""
    records = jax.device_get(loop_records(state))
    y, action, meas, model, stop_reason, iterations, saved = records
    if partial:  # each path at the minimum of the last β it finished
        y = np.asarray(jax.device_get(state.lanes.minimum))
    cut = slice(0, settings.n_paths)
    minimiser = settings.minimiser
    final = _unflatten(minimiser, problem, y[cut])
    saved_trees = {
        b: jax.device_get(_unflatten(minimiser, problem, saved[cut, j]))
        for j, b in enumerate(settings.save_betas)
    }
    stats = {
        "run_time": stats["run_time"],
        "compile_time": stats["compile_time"],
        "loop_steps": int(np.max(jax.device_get(state.loop_steps))),
        "lane_steps": int(np.sum(iterations[cut])),
        "n_devices": stats["n_devices"],
        "problem": problem_digest(problem),
    }
    return AnnealResult(
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
        partial=partial,
    )


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
    progress: bool | AbstractProgressMeter = True,
    throw: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: float = 60.0,
    resume: str | os.PathLike | None = None,
) -> AnnealResult:
    r"""Variational annealing: minimise `problem.action(X, R_f)` for R_f = rf0·α^β, β = 0…

    Each β is minimised by the `minimiser` (L-BFGS by default) from the previous β's
    minimum; the first from `problem.init` draws (or `init`). All `n_paths` paths run
    together in one compiled program ([`deepest.annealing.anneal_lanes`][]), each with its
    own β, split over `devices`. Each step is one evaluation of the action A. The
    minimisation of a β stops (`result.stop_reason`, a [`deepest.StopReason`][]) when

    - the last accepted step lowered A by at most `ftol`·|A| **and** the decrease the
      minimiser's local model still predicts (½ gᵀHg for L-BFGS) is at most `ftol`·|A|:
      relative to A itself, so that an action of 1e-7 is minimised as well as one of 1e3
      (also when the line search fails along a direction on which the model expects at
      most `ftol`·|A|: what is left is below A's rounding);
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
    - `progress`: how to show progress: True (default) for a tqdm bar of finished
      (path, β) minimisations ([`deepest.TqdmProgressMeter`][]), False for none
      ([`deepest.NoProgressMeter`][]), or an [`deepest.AbstractProgressMeter`][].
    - `throw`: raise if every path turns non-finite (else return the result, whose
      `finite` flags say so).
    - `checkpoint`: a folder to write the loop's exact state to (`checkpoint.npz`,
      atomically) every `checkpoint_every` seconds and when interrupted.
    - `checkpoint_every`: seconds between checkpoints (> 0).
    - `resume`: a folder holding a checkpoint of this same run (same problem, initial
      paths, schedule, settings and device count): the loop goes on from it and ends
      bit for bit as the uninterrupted run would (only the timings differ). A checkpoint
      of another run is refused, naming what differs.

    The loop runs in chunks of a fraction of a second (one compiled program for every
    chunk), so that the host can act between them. Ctrl-C (SIGINT) stops the run at the
    end of the chunk and returns what is finished: a result with `partial=True` whose
    levels of the β's not finished are NaN (`stop_reason` `not_reached`) and whose
    unknowns are each path's minimum at the last β it finished; a second Ctrl-C raises at
    once.

    **Returns:** an [`deepest.AnnealResult`][].
    """
    settings = _Settings.check(
        schedule, n_paths, save_betas, ftol, gtol, max_steps, minimiser, dtype, progress
    )
    _check_checkpointing(checkpoint_every, resume)
    if key is None and init is None:
        raise ValueError("Pass a PRNG `key` for the initial paths, or the paths as `init`.")
    problem, y0, rf_table, factors = _start(problem, schedule, key, init, settings)

    devices = tuple(jax.devices() if devices is None else devices)
    n_dev = len(devices)
    padded = -(-settings.n_paths // n_dev) * n_dev
    if padded > settings.n_paths:
        y0 = jnp.concatenate([y0, jnp.repeat(y0[-1:], padded - settings.n_paths, axis=0)])
    config = settings.loop_config(schedule.n_beta)
    fps = fingerprints(problem, y0, rf_table, factors, config, settings.n_paths, n_dev)
    hosts = Hosts(devices)
    if n_dev > 1:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        sharding = NamedSharding(Mesh(np.asarray(devices), ("paths",)), P("paths"))
        y0 = hosts.put(jax.device_get(y0), sharding)
        problem, rf_table, factors = hosts.local((problem, rf_table, factors))

    state, compile_time, run_time, partial = _run_chunks(
        problem, y0, rf_table, factors, config, devices, fps, checkpoint, checkpoint_every, resume
    )
    stats = {"run_time": run_time, "compile_time": compile_time, "n_devices": n_dev}
    result = _result(problem, schedule, settings, hosts.get(state), stats, partial)
    if throw and not result.finite.any():
        counts = ", ".join(f"{k}: {v}" for k, v in result.stop_reasons().items() if v)
        raise RuntimeError(
            f"Every path turned non-finite ({counts}): check the model, the data and rf0, "
            f"or pass throw=False to get the result with its flags."
        )
    return result


# The host loop between chunks aims at chunks of this many seconds: short enough that
# Ctrl-C is answered at once, long enough that the return to the host costs little.
_CHUNK_SECONDS = 0.25


class _Interrupt:
    """While open (in the main thread), the first SIGINT sets `hit`; a second raises."""

    def __init__(self):
        self.hit = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _run_chunks(
    problem, y0, rf_table, factors, config, devices, fps, checkpoint, every, resume, batched=False
):
    """Run the loop chunk by chunk from a fresh state or a checkpoint (`batched`: with a
    leading axis of settings, as for a sweep). A checkpoint is written every `every`
    seconds, when interrupted, and at the end.

    **Returns:** `(state, compile_time, run_time, partial)`.
    """
    hosts = Hosts(devices)
    start = time.perf_counter()
    state = init_loop(problem, y0, rf_table, factors, config, devices, batched)
    run_before = 0.0
    if resume is not None:
        state, meta = load_checkpoint(resume, state, fps, put=hosts.put)
        run_before = float(meta["run_time"])
    zero = np.int32(0) if hosts.many else jnp.asarray(0, jnp.int32)
    # Lowered and compiled apart from the run, to report the compile time; a program of
    # the same shapes and settings is reused (jit's cache), then this takes no time.
    advance = advance_loop.lower(
        problem, y0, rf_table, factors, zero, state, zero, config, devices, batched
    ).compile()
    compile_time = time.perf_counter() - start

    def save(run_time):
        if checkpoint is not None:
            whole = hosts.get(state)  # every process takes part; process 0 writes
            if hosts.writes:
                meta = {"fingerprints": fps, "run_time": run_time}
                save_checkpoint(os.fspath(checkpoint), whole, meta)

    def view():  # what the host loop decides by, the same on every process
        return hosts.get((state.lanes.beta, state.lanes.stop_reason, state.loop_steps))

    beta, stop_reason, loop_steps = view()
    # The bar counts the (path, β) minimisations still to run.
    done_before = int(np.sum(stop_reason != 0))
    handle = config.progress_meter.open(int(np.prod(y0.shape[:-1])) * config.n_beta - done_before)
    chunk, start, saved_at = 8, time.perf_counter(), time.perf_counter()
    finished = loop_finished((beta, loop_steps), config)
    try:
        with _Interrupt() as interrupt:
            while not finished and not hosts.any(interrupt.hit):
                began = time.perf_counter()
                stop_at = int(np.max(loop_steps)) + chunk
                state = advance(
                    problem,
                    y0,
                    rf_table,
                    factors,
                    hosts.scalar(handle),
                    state,
                    hosts.scalar(stop_at),
                    config,
                    devices,
                    batched,
                )
                beta, _, loop_steps = view()
                finished = loop_finished((beta, loop_steps), config)
                took = time.perf_counter() - began
                grow = _CHUNK_SECONDS / max(took, 1e-4)
                chunk = hosts.agree(int(min(max(chunk * min(grow, 2.0), 1), 2**30)))
                due = time.perf_counter() - saved_at >= every
                if not finished and hosts.agree(int(due)):
                    save(run_before + time.perf_counter() - start)
                    saved_at = time.perf_counter()
            run_time = run_before + time.perf_counter() - start
            save(run_time)
            if not finished:
                warnings.warn(
                    "Annealing interrupted: returning the finished β's of every path "
                    "(result.partial is True)"
                    + (f"; resume from {checkpoint}." if checkpoint is not None else "."),
                    stacklevel=3,
                )
    finally:
        config.progress_meter.close(handle)
    return state, compile_time, run_time, not finished
