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

from ._checkpoint import fingerprints, load_checkpoint, save_checkpoint
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
    meter = progress_meter(progress)
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
    if not (float(checkpoint_every) > 0):
        raise ValueError(f"`checkpoint_every` must be positive (seconds); got {checkpoint_every}.")
    if resume is not None and not os.path.isdir(resume):
        raise ValueError(f"`resume`: {resume} is not a folder.")

    problem = _cast(problem, dtype)
    if init is None:
        unknowns = _draw(problem, jr.split(key, n_paths))
    else:
        unknowns = _check_init(problem, init, n_paths, dtype)
    y0 = _flatten(minimiser, problem, unknowns).astype(dtype)

    rf_table = jnp.asarray(schedule.rf, dtype)
    factors = jnp.asarray(schedule.alpha ** np.arange(schedule.n_beta), dtype)

    devices = list(jax.devices() if devices is None else devices)
    n_dev = len(devices)
    padded = -(-n_paths // n_dev) * n_dev
    if padded > n_paths:
        y0 = jnp.concatenate([y0, jnp.repeat(y0[-1:], padded - n_paths, axis=0)])

    config = LoopConfig(
        n_beta=schedule.n_beta,
        save_betas=save_betas,
        ftol=ftol,
        gtol=gtol,
        max_steps=int(max_steps),
        minimiser=minimiser,
        progress_meter=meter,
    )
    if n_dev > 1:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        y0 = jax.device_put(y0, NamedSharding(Mesh(np.asarray(devices), ("paths",)), P("paths")))
    devices = tuple(devices)

    fps = fingerprints(problem, y0, rf_table, factors, config, n_paths, n_dev)
    state, compile_time, run_time, partial = _run_chunks(
        problem, y0, rf_table, factors, config, devices, fps, checkpoint, checkpoint_every, resume
    )
    records = jax.device_get(loop_records(state))
    y, action, meas, model, stop_reason, iterations, saved = records
    if partial:  # each path at the minimum of the last β it finished
        y = jax.device_get(state.lanes.minimum)
    loop_steps = jax.device_get(state.loop_steps)
    cut = slice(0, n_paths)
    final = _unflatten(minimiser, problem, y[cut])
    saved_trees = {
        b: jax.device_get(_unflatten(minimiser, problem, saved[cut, j]))
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
        partial=partial,
    )
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


def _run_chunks(problem, y0, rf_table, factors, config, devices, fps, checkpoint, every, resume):
    """Run the loop chunk by chunk from a fresh state or a checkpoint.

    **Returns:** `(state, compile_time, run_time, partial)`.
    """
    start = time.perf_counter()
    state = init_loop(problem, y0, rf_table, factors, config, devices)
    run_before = 0.0
    if resume is not None:
        state, meta = load_checkpoint(resume, state, fps)
        run_before = float(meta["run_time"])
    zero = jnp.asarray(0, jnp.int32)
    # Lowered and compiled apart from the run, to report the compile time; a program of
    # the same shapes and settings is reused (jit's cache), then this takes no time.
    advance = advance_loop.lower(
        problem, y0, rf_table, factors, zero, state, zero, config, devices
    ).compile()
    compile_time = time.perf_counter() - start

    def save(run_time):
        if checkpoint is not None:
            meta = {"fingerprints": fps, "run_time": run_time}
            save_checkpoint(os.fspath(checkpoint), state, meta)

    # The bar counts the (path, β) minimisations still to run.
    done_before = int(np.sum(np.asarray(state.lanes.stop_reason) != 0))
    handle = config.progress_meter.open(len(y0) * config.n_beta - done_before)
    chunk, start, saved_at = 8, time.perf_counter(), time.perf_counter()
    finished = loop_finished(state, config)
    try:
        with _Interrupt() as interrupt:
            while not finished and not interrupt.hit:
                began = time.perf_counter()
                stop_at = int(np.max(np.asarray(state.loop_steps))) + chunk
                state = advance(
                    problem,
                    y0,
                    rf_table,
                    factors,
                    jnp.asarray(handle, jnp.int32),
                    state,
                    jnp.asarray(stop_at, jnp.int32),
                    config,
                    devices,
                )
                finished = loop_finished(state, config)
                took = time.perf_counter() - began
                grow = _CHUNK_SECONDS / max(took, 1e-4)
                chunk = int(min(max(chunk * min(grow, 2.0), 1), 2**30))
                if not finished and time.perf_counter() - saved_at >= every:
                    save(run_before + time.perf_counter() - start)
                    saved_at = time.perf_counter()
            run_time = run_before + time.perf_counter() - start
            if interrupt.hit and not finished:
                save(run_time)
                warnings.warn(
                    "Annealing interrupted: returning the finished β's of every path "
                    "(result.partial is True)"
                    + (f"; resume from {checkpoint}." if checkpoint is not None else "."),
                    stacklevel=3,
                )
    finally:
        config.progress_meter.close(handle)
    return state, compile_time, run_time, not finished
