"""The host side of every annealing run, shared by [`deepest.anneal`][] and
[`deepest.sweep`][]: the settings' checks, each problem's start (its initial paths drawn
or checked), the chunked run of the compiled loop (`_loop.py`) with its checkpoints and
Ctrl-C, and the result of a problem's lanes.

`anneal` runs one problem; `sweep` runs groups of problems of one structure and shapes,
each group one program whose settings axis is a vmap of the same loop body (`batched`).
"""

import collections
import os
import shutil
import signal
import sys
import threading
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from .._misc import cast_floating, format_bytes, host_memory
from ._checkpoint import fingerprints, load_checkpoint, problem_digest, save_checkpoint
from ._hosts import Hosts
from ._loop import (
    LoopConfig,
    LoopState,
    advance_loop,
    init_loop,
    loop_finished,
    loop_records,
    prepare_loop,
)
from ._minimiser import LBFGS, AbstractMinimiser
from ._problem import AbstractProblem
from ._progress import AbstractProgressMeter, progress_meter
from ._schedule import AnnealSchedule
from ._solution import AnnealResult, from_stop_codes


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
            stacklevel=_user_stacklevel(),
        )


@eqx.filter_jit
def _model_sensitivities(minimiser, problem, y0):
    return jax.vmap(lambda y: problem.model_sensitivity(minimiser.unflatten(problem, y)))(y0)


def _user_stacklevel() -> int:
    """The `stacklevel` at which a warning of this function's caller names the frame that
    called into this package (the user's call of anneal or sweep), past every frame of the
    package and the wrappers between them (equinox's methods, deprecated keywords)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    names, frame = [], sys._getframe(1)
    while frame is not None:
        names.append(frame.f_code.co_filename)
        frame = frame.f_back
    inside = [i for i, name in enumerate(names) if name.startswith(package)]
    return inside[-1] + 2


def _check_model_derivatives(minimiser, problem, y0):
    """Warn, before any annealing, when the model's derivative with respect to the state is
    exactly zero at every state of every initial path: the action's gradient then carries
    none of the model's dynamics, and the minimiser moves the unobserved components only to
    shrink the residuals' differences, not along the model. (The model term's own gradient
    is not zero there: the residual x(n+1) − x(n) − Δ depends on the states through the
    difference, whatever the model.)"""
    one = eqx.filter_eval_shape(
        lambda y: problem.model_sensitivity(minimiser.unflatten(problem, y)), y0[0]
    )
    if one is None:  # no model map
        return
    derivatives = np.asarray(_model_sensitivities(minimiser, problem, y0))
    if np.all(derivatives == 0):
        warnings.warn(
            "The model's derivative with respect to the state is zero at every state of every "
            "initial path (a model built from jnp.floor, jnp.round or jnp.sign, or one that "
            "stops gradients, is flat almost everywhere): the minimiser gets no gradient "
            "from the model's dynamics and cannot move the unobserved components along it. "
            "Write the model with a nonzero derivative (e.g. a smooth surrogate of the "
            "step); if it does not depend on the state by design, ignore this warning.",
            stacklevel=_user_stacklevel(),
        )


class RunSettings(eqx.Module):
    """The settings of a run that every path (and every point of a sweep) shares, checked
    (`check`); how a problem starts (`start`) and what its lanes' records give
    (`result`)."""

    n_paths: int
    save_betas: tuple[int, ...]
    ftol: float
    gtol: float
    max_evaluations: int
    minimiser: AbstractMinimiser
    dtype: np.dtype
    meter: AbstractProgressMeter
    check_memory: bool = True
    group_size: int | None = None

    @staticmethod
    def check(
        schedule,
        n_paths,
        save_betas,
        ftol,
        gtol,
        max_evaluations,
        minimiser,
        dtype,
        progress,
        check_memory=True,
        group_size=None,
    ):
        """The settings of `anneal`'s (or `sweep`'s) arguments, or a clear error."""
        if not isinstance(schedule, AnnealSchedule):
            raise TypeError("`schedule` must be a deepest.AnnealSchedule.")
        if int(n_paths) != n_paths or n_paths < 1:
            raise ValueError(f"`n_paths` must be a positive integer; got {n_paths}.")
        if int(max_evaluations) != max_evaluations or max_evaluations < 1:
            raise ValueError(
                f"`max_evaluations` must be a positive integer; got {max_evaluations}."
            )
        meter = progress_meter(progress)
        minimiser = LBFGS() if minimiser is None else minimiser
        if not isinstance(minimiser, AbstractMinimiser):
            raise TypeError(
                f"`minimiser` must be a deepest.AbstractMinimiser, e.g. deepest.LBFGS() or "
                f"deepest.LevenbergMarquardt(); got {type(minimiser).__name__}."
            )
        if group_size is not None and (int(group_size) != group_size or group_size < 1):
            raise ValueError(f"`group_size` must be a positive integer or None; got {group_size}.")
        save_betas = tuple(sorted({int(b) for b in (save_betas or ())}))
        if any(b < 0 or b >= schedule.n_beta for b in save_betas):
            raise ValueError(f"`save_betas` must lie in [0, {schedule.n_beta}); got {save_betas}.")
        dtype = _resolve_dtype(dtype)
        ftol, gtol = _tolerances(dtype, ftol, gtol)
        return RunSettings(
            int(n_paths),
            save_betas,
            ftol,
            gtol,
            int(max_evaluations),
            minimiser,
            dtype,
            meter,
            bool(check_memory),
            None if group_size is None else int(group_size),
        )

    def loop_config(self, n_beta: int) -> LoopConfig:
        """The compiled loop's settings for a schedule of `n_beta` values."""
        return LoopConfig(
            n_beta=n_beta,
            save_betas=self.save_betas,
            ftol=self.ftol,
            gtol=self.gtol,
            max_evaluations=self.max_evaluations,
            minimiser=self.minimiser,
            progress_meter=self.meter,
        )

    def check_problem(self, problem, schedule) -> None:
        """Raise for a `problem` that is not one, that the minimiser cannot solve, or whose
        schedule's R_f does not fit it."""
        if not isinstance(problem, AbstractProblem):
            raise TypeError(f"`problem` must be a deepest.AbstractProblem; got {type(problem)}.")
        self.minimiser.check(problem)
        problem.check_rf(schedule.rf0)

    def start(self, problem, schedule, key, init):
        """Check one problem against its schedule and settings; cast it; draw (or check) its
        initial paths and flatten them. **Returns:** `(problem, y0, rf_table, factors)`."""
        self.check_problem(problem, schedule)
        dtype, minimiser = self.dtype, self.minimiser
        problem = cast_floating(problem, dtype)
        if init is None:
            unknowns = _draw(problem, jr.split(key, self.n_paths))
        else:
            unknowns = _check_init(problem, init, self.n_paths, dtype)
        unknowns = _inside_bounds(problem, unknowns, given=init is not None)
        y0 = _flatten(minimiser, problem, unknowns).astype(dtype)
        _check_initial_actions(minimiser, problem, y0, jnp.asarray(schedule.rf[0], dtype))
        _check_model_derivatives(minimiser, problem, y0)
        rf_table = jnp.asarray(schedule.rf, dtype)
        factors = jnp.asarray(schedule.alpha ** np.arange(schedule.n_beta), dtype)
        return problem, y0, rf_table, factors

    def result(self, problem, schedule, state, stats: dict, partial: bool):
        """The [`deepest.AnnealResult`][] of one problem's loop `state` (lanes past `n_paths`
        are padding)."""
        records = jax.device_get(loop_records(state))
        y, action, meas, model, stop_reason, iterations, saved = records
        if partial:  # each path at the minimum of the last β it finished
            y = np.asarray(jax.device_get(state.lanes.minimum))
        cut = slice(0, self.n_paths)
        minimiser = self.minimiser
        final = _unflatten(minimiser, problem, y[cut])
        saved_trees = {
            b: jax.device_get(_unflatten(minimiser, problem, saved[cut, j]))
            for j, b in enumerate(self.save_betas)
        }
        stats = {
            "run_time": stats["run_time"],
            "compile_time": stats["compile_time"],
            "loop_steps": int(np.max(jax.device_get(state.loop_steps))),
            "lane_steps": int(np.sum(iterations[cut])),
            "n_devices": stats["n_devices"],
            "lanes_per_group": stats["lanes_per_group"],
            "problem": problem_digest(problem),
        }
        return AnnealResult(
            rf=np.asarray(schedule.rf),
            action=action[cut].T,
            measurement_error=meas[cut].T,
            model_error=model[cut].T,
            **from_stop_codes(stop_reason[cut].T),
            iterations=iterations[cut].T,
            unknowns=jax.device_get(final),
            saved=saved_trees,
            views=jax.device_get(problem.views(final)),
            stats=stats,
            expected_action=problem.expected_action,
            problem=problem,
            partial=partial,
        )


def check_checkpointing(checkpoint_every, resume):
    """Raise `ValueError` for a non-positive `checkpoint_every` or a `resume` that is not a
    folder."""
    if not (float(checkpoint_every) > 0):
        raise ValueError(f"`checkpoint_every` must be positive (seconds); got {checkpoint_every}.")
    if resume is not None and not os.path.isdir(resume):
        raise ValueError(f"`resume`: {resume} is not a folder.")


def _tolerances(dtype, ftol, gtol):
    # The polish test of tests/test_anneal.py fixes these: at the defaults a tight scipy
    # polish of a converged level lowers it by < 1e-6 relative in float64 and < 1e-3 in
    # float32, where rounding of an action summed over ~10⁴ terms allows no less. (L-BFGS
    # with `carry_curvature=True` runs unpreconditioned and stops up to ~1.4e-6 above the
    # minimum at the first β: tests/test_anneal.py's carried-curvature test measures it.)
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
    return cast_floating(unknowns, dtype)


def _inside_bounds(problem, unknowns, *, given: bool):
    """The starting `unknowns` inside the problem's box (`problem.bounds()`): drawn ones
    clipped into it (rounding at an edge), given ones (`init`) checked, with an error that
    names the first entry outside."""
    box = problem.bounds()
    if box is None:
        return unknowns
    lower, upper = box
    if given:
        leaves = jtu.tree_flatten_with_path(unknowns)[0]
        for (where, x), lo, hi in zip(leaves, jtu.tree_leaves(lower), jtu.tree_leaves(upper)):
            x, lo, hi = np.asarray(x), np.asarray(lo), np.asarray(hi)
            outside = (x < lo) | (x > hi)
            if outside.any():
                path, *index = np.argwhere(outside)[0]
                at = ", ".join(str(int(i)) for i in index)
                raise ValueError(
                    f"`init{jtu.keystr(where)}` lies outside the problem's bounds: path "
                    f"{int(path)}, entry [{at}] is {x[path][tuple(index)]:g}, outside "
                    f"[{lo[tuple(index)]:g}, {hi[tuple(index)]:g}]. Start inside the box."
                )

    def clip(x, lo, hi):
        lo, hi = (jnp.broadcast_to(b, x.shape) for b in (lo, hi))
        return jnp.clip(x, lo, hi).astype(x.dtype)

    return jtu.tree_map(clip, unknowns, lower, upper)


# The host loop between chunks aims at chunks of this many seconds: short enough that
# Ctrl-C is answered at once, long enough that the return to the host costs little.
_CHUNK_SECONDS = 0.25


INTERRUPT = threading.Event()
"""Set from any thread (e.g. a command line whose run is in a worker thread, or a
notebook's button) to stop the running [`deepest.anneal`][] or [`deepest.sweep`][] as
Ctrl-C does: after the current chunk, with a checkpoint and a partial result. The run that
answers it clears it."""


class Interruption:
    """While open, the first SIGINT (in the main thread) or `INTERRUPT` sets `hit`; a
    second SIGINT raises, unless `patient` (for a few milliseconds of work that must not
    be cut: every SIGINT only sets `hit`)."""

    def __init__(self, patient: bool = False):
        self._hit = False
        self._previous = None
        self._patient = patient

    @property
    def hit(self) -> bool:
        return self._hit or INTERRUPT.is_set()

    def _handle(self, signum, frame):
        if self.hit and not self._patient:
            raise KeyboardInterrupt
        self._hit = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        if self.hit:
            INTERRUPT.clear()


def _run_chunks(
    problem,
    y0,
    rf_table,
    factors,
    config,
    devices,
    fps,
    checkpoint,
    every,
    resume,
    batched=False,
    check_memory=True,
    group=None,
):
    """Run the loop chunk by chunk from a fresh state or a checkpoint (`batched`: with a
    leading axis of settings, as for a sweep). A checkpoint is written every `every`
    seconds, when interrupted, and at the end.

    With `group` lanes (a divisor of the lanes; see `_lanes_per_group`) on one device, the
    run is cut into units run one after another, each through the same compiled program
    of `group` lanes (of one setting: a sweep's settings then run one after another too):
    one loop state for the whole run (its step counters one per unit), one checkpoint,
    one resume. Each lane steps as in one program of all lanes (the lanes never interact,
    and what they share, `prepare_loop`, is made once from the whole run's initial paths):
    bit for bit, but for groups of one lane, which XLA compiles without the batch axis
    (rounding: 7e-15 relative on the L = 12 config).

    **Returns:** `(state, compile_time, run_time, partial)`.
    """
    hosts = Hosts(devices)
    start = time.perf_counter()
    units = _units(y0, group, batched, devices)
    if units is None:
        state = init_loop(problem, y0, rf_table, factors, config, devices, batched)
        # What the lanes share, made once (one device; several make it at each chunk).
        shared = None
        if len(devices) == 1:
            shared = prepare_loop(problem, y0, rf_table, factors, config, batched)
        unit_args = {None: (problem, y0, rf_table, factors, batched, shared)}
    else:  # one state on the host, a step counter per unit; each unit's made by its program
        unit_args = _unit_inputs(units, group, problem, y0, rf_table, factors, config)
        state = _init_units(unit_args, config, devices, y0.shape[:-2] + (y0.shape[-2] // group,))
    run_before = 0.0
    if resume is not None:
        put = hosts.put if units is None else (lambda a, _: np.array(a))
        state, meta = load_checkpoint(resume, state, fps, put=put)
        run_before = float(meta["run_time"])
    zero = np.int32(0) if hosts.many else jnp.asarray(0, jnp.int32)
    first_unit, first = next(iter(unit_args.items()))
    one_state = (
        state if units is None else _unit_state(state, first_unit, group, first, config, devices)
    )
    p, y, rf, fac, b, sh = first
    advance = _compiled_advance(((p, y, rf, fac, zero, zero, config, devices, b, sh), one_state))
    if check_memory:
        _check_compiled_memory(advance, devices)
    compile_time = time.perf_counter() - start

    def save(run_time):
        if checkpoint is not None:
            all_lanes = hosts.get(state)  # every process takes part; process 0 writes
            if hosts.writes:
                meta = {"fingerprints": fps, "run_time": run_time}
                try:
                    save_checkpoint(os.fspath(checkpoint), all_lanes, meta)
                except OSError as e:  # the state stays in memory; the run goes on
                    warnings.warn(
                        f"The checkpoint could not be written to {checkpoint}: {e}. The run "
                        "goes on (its state in memory); the last checkpoint there, if any, "
                        "is older.",
                        stacklevel=_user_stacklevel(),
                    )

    def view(s):  # what the host loop decides by, the same on every process
        return hosts.get((s.lanes.beta, s.loop_steps))

    # The bar counts the (path, β) minimisations still to run.
    done_before = int(np.sum(hosts.get(state.lanes.stop_reason) != 0))
    handle = config.progress_meter.open(int(np.prod(y0.shape[:-1])) * config.n_beta - done_before)
    chunk, start, saved_at = 8, time.perf_counter(), time.perf_counter()
    finished = loop_finished(view(state), config)
    try:
        with Interruption() as interrupt:
            for unit, (p, y, rf, fac, b, sh) in unit_args.items():
                if hosts.any(interrupt.hit):
                    break
                # (a run cut into units: `state` on the host, each unit's on the device)
                s = (
                    one_state
                    if unit == first_unit
                    else _unit_state(state, unit, group, unit_args[unit], config, devices)
                )
                beta, loop_steps = view(s)
                done = loop_finished((beta, loop_steps), config)
                while not done and not hosts.any(interrupt.hit):
                    began = time.perf_counter()
                    stop_at = int(np.max(loop_steps)) + chunk
                    handle_, stop_at_ = hosts.scalar(handle), hosts.scalar(stop_at)
                    # the loop state is donated: `s` is replaced, never read again
                    s = advance((p, y, rf, fac, handle_, stop_at_, config, devices, b, sh), s)
                    beta, loop_steps = view(s)
                    done = loop_finished((beta, loop_steps), config)
                    took = time.perf_counter() - began
                    grow = _CHUNK_SECONDS / max(took, 1e-4)
                    chunk = hosts.agree(int(min(max(chunk * min(grow, 2.0), 1), 2**30)))
                    if unit is None:
                        state = s
                    due = time.perf_counter() - saved_at >= every
                    if not done and hosts.agree(int(due)):
                        if unit is not None:
                            _put(state, unit, group, jax.device_get(s))
                        save(run_before + time.perf_counter() - start)
                        saved_at = time.perf_counter()
                if unit is not None:
                    _put(state, unit, group, jax.device_get(s))
            finished = loop_finished(view(state), config)
            run_time = run_before + time.perf_counter() - start
            save(run_time)
            if not finished:
                warnings.warn(
                    "Annealing interrupted: returning the finished β's of every path "
                    "(result.partial is True)"
                    + (f"; resume from {checkpoint}." if checkpoint is not None else "."),
                    stacklevel=_user_stacklevel(),
                )
    finally:
        config.progress_meter.close(handle)
    return state, compile_time, run_time, not finished


# On one CPU core a loop step's cost per lane grows once the lanes' state outgrows the
# caches (BENCHMARKS.md, "Lanes at cache speed"): a run is cut into groups of lanes of
# at most this much loop state, run one after another.
_CPU_GROUP_BYTES = 2**21
_LANE_BYTES: dict = {}  # the loop state's bytes per lane, by the kind of a run's inputs


def _lanes_per_group(problem, y0, rf_table, factors, config, devices, batched, group_size):
    """The lanes of each unit of a run on one device: `group_size` if given, else all of
    them on an accelerator and as many as fit `_CPU_GROUP_BYTES` of loop state on a CPU;
    then evened out over the units (20 lanes in groups of at most 8: 3 of 7)."""
    lanes = y0.shape[-2]
    if len(devices) > 1:
        if group_size is not None:
            raise ValueError(
                "`group_size` cuts a run on one device into groups of paths; with several "
                f"devices ({len(devices)}) each runs its share of the paths as one group. "
                "Pass one device, or group_size=None."
            )
        return lanes
    if group_size is None:
        if devices[0].platform != "cpu":
            return lanes
        args = (problem, y0, rf_table, factors, config, devices, batched)
        key = _kind(args)
        per_lane = None if key is None else _LANE_BYTES.get(key)
        if per_lane is None:
            shapes = eqx.filter_eval_shape(init_loop, *args)
            per_lane = _nbytes(shapes.lanes) / int(np.prod(y0.shape[:-1]))
            if key is not None:
                if len(_LANE_BYTES) >= _PROGRAMS_KEPT:
                    _LANE_BYTES.clear()
                _LANE_BYTES[key] = per_lane
        group_size = max(1, int(_CPU_GROUP_BYTES // max(per_lane, 1)))
    n_groups = -(-lanes // min(group_size, lanes))
    return -(-lanes // n_groups)


def _pad_lanes(y0, lanes: int):
    """`y0` with `lanes` lanes (axis −2): its last path repeated (padding, cut from the
    results)."""
    extra = lanes - y0.shape[-2]
    if extra <= 0:
        return y0
    return jnp.concatenate([y0, jnp.repeat(y0[..., -1:, :], extra, axis=-2)], axis=-2)


def _units(y0, group, batched, devices):
    """The units a run on one device is cut into, `(setting or None, group index)`, run
    one after another; `None` for a run in one program (several devices, or one group of
    one problem, or an accelerator's sweep, whose settings are a vmap)."""
    if group is None or len(devices) > 1:
        return None
    n_groups = y0.shape[-2] // group
    if not batched:
        return None if n_groups == 1 else [(None, g) for g in range(n_groups)]
    if n_groups == 1 and devices[0].platform != "cpu":
        return None
    return [(s, g) for s in range(y0.shape[0]) for g in range(n_groups)]


def _index(unit, group):
    setting, g = unit
    lanes, counter = slice(g * group, (g + 1) * group), slice(g, g + 1)
    if setting is None:
        return lanes, counter
    return (setting, lanes), (setting, counter)


def _take(whole: LoopState, unit, group) -> LoopState:
    """The loop state of one unit of `whole` (host arrays)."""
    lanes, counter = _index(unit, group)
    return LoopState(
        jax.tree.map(lambda a: a[lanes], whole.lanes),
        whole.loop_steps[counter],
        whole.lane_steps[counter],
    )


def _unit_state(whole: LoopState, unit, group, inputs, config, devices) -> LoopState:
    """One unit's loop state on the device: made afresh by its program if it has not
    started (as a host copy would lose the weak types of a solver's state, e.g.
    optimistix's step sizes), else read from `whole`."""
    part = _take(whole, unit, group)
    if np.any(part.loop_steps):
        return jax.device_put(part, devices[0])
    p, y, rf, fac, _, shared = inputs
    return init_loop(p, y, rf, fac, config, devices, False, shared)


def _put(whole: LoopState, unit, group, part: LoopState) -> None:
    """Write one unit's loop state `part` into `whole` (host arrays), in place."""
    lanes, counter = _index(unit, group)
    for a, b in zip(jtu.tree_leaves(whole.lanes), jtu.tree_leaves(part.lanes)):
        a[lanes] = b
    whole.loop_steps[counter] = part.loop_steps
    whole.lane_steps[counter] = part.lane_steps


def _init_units(unit_args: dict, config, devices, counters: tuple) -> LoopState:
    """The loop state of a run cut into units (`_unit_inputs`), on the host: each unit's
    lanes made by the program of one unit, with the run's shared parts; `counters`, the
    shape of the step counters (settings, if any, then units)."""
    parts = [
        jax.device_get(init_loop(p, y, rf, fac, config, devices, False, sh).lanes)
        for p, y, rf, fac, _, sh in unit_args.values()
    ]
    per_setting = counters[-1]
    settings = [
        jax.tree.map(lambda *a: np.concatenate(a), *parts[i : i + per_setting])
        for i in range(0, len(parts), per_setting)
    ]
    lanes = settings[0] if len(counters) == 1 else jax.tree.map(lambda *a: np.stack(a), *settings)
    return LoopState(lanes, np.zeros(counters, np.int32), np.zeros(counters, np.int32))


def _unit_inputs(units, group, problem, y0, rf_table, factors, config) -> dict:
    """The loop's inputs of each unit, `{unit: (problem, y0, rf_table, factors, False,
    shared)}`: its setting's problem, schedule and shared parts (made once per setting,
    by the program of one problem, as a run of its own makes them) and its lanes' initial
    paths."""
    params, static = eqx.partition(problem, eqx.is_array)
    settings, inputs = {}, {}
    for unit in units:
        setting, g = unit
        if setting not in settings:
            if setting is None:
                one = (problem, y0, rf_table, factors)
            else:
                p, r, f = jax.tree.map(lambda a, s=setting: a[s], (params, rf_table, factors))
                one = (eqx.combine(p, static), y0[setting], r, f)
            settings[setting] = one + (prepare_loop(*one, config),)
        p, y, r, f, shared = settings[setting]
        inputs[unit] = (p, y[g * group : (g + 1) * group], r, f, False, shared)
    return inputs


# The compiled loop programs of recent runs, by what jit's cache would key them on: the
# structure, shapes and dtypes of the arguments and their static parts. A run of the same
# shapes (the next window of a cycle, another key) reuses one, neither traced nor compiled.
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_PROGRAMS_KEPT = 8


def _kind(args):
    """What jit's cache would key `args` on: the structure, shapes, dtypes and shardings of
    their arrays and their static parts (`None` if a static part is unhashable)."""
    dynamic, static = eqx.partition(args, eqx.is_array)
    leaves, treedef = jtu.tree_flatten(dynamic)
    kinds = tuple(
        (np.shape(a), a.dtype, getattr(a, "weak_type", False), getattr(a, "sharding", None))
        for a in leaves
    )
    fixed, fixed_def = jtu.tree_flatten(static)
    try:
        key = (treedef, kinds, fixed_def, tuple(fixed))
        hash(key)
    except TypeError:
        return None
    return key


@eqx.filter_jit(donate="all-except-first")
def _advance_donating(fixed, state: LoopState) -> LoopState:
    """`advance_loop` with its loop `state` donated (its buffers become the new state's:
    no copy of the state per chunk, and the run needs memory for one state, not two);
    `fixed`, every other argument, in `advance_loop`'s order."""
    problem, y0, rf_table, factors, handle, stop_at, config, devices, settings, shared = fixed
    args = (problem, y0, rf_table, factors, handle, state, stop_at, config, devices, settings)
    return advance_loop(*args, shared)


def _compiled_advance(args):
    """`_advance_donating` lowered and compiled for `args`, `(fixed, state)` (apart from
    the run, to report the compile time), or the program compiled for arguments of the
    same kind before."""
    key = _kind(args)
    if key is not None and key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    lowered = _advance_donating.lower(*args)
    meter = args[0][6].progress_meter
    if type(meter).compiling is not AbstractProgressMeter.compiling:  # it listens: the size
        meter.compiling(lowered.as_text().count("\n"))
    advance = lowered.compile()
    if key is not None:
        _PROGRAMS[key] = advance
        while len(_PROGRAMS) > _PROGRAMS_KEPT:
            _PROGRAMS.popitem(last=False)
    return advance


def _place(problem, y0, rf_table, factors, devices, hosts: Hosts, batched: bool):
    """The loop's inputs placed for a program over several `devices`: split along the
    settings (`batched`: every array) or the lanes (`y0`; the rest replicated)."""
    if len(devices) <= 1:
        return problem, y0, rf_table, factors
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    sharding = NamedSharding(Mesh(np.asarray(devices), ("paths",)), P("paths"))

    if not batched:
        y0 = hosts.put(jax.device_get(y0), sharding)
        problem, rf_table, factors = hosts.local((problem, rf_table, factors))
        return problem, y0, rf_table, factors

    def spread(tree):
        return jax.tree.map(lambda a: hosts.put(jax.device_get(a), sharding), tree)

    params, static = eqx.partition(problem, eqx.is_array)
    params, y0, rf_table, factors = map(spread, (params, y0, rf_table, factors))
    return eqx.combine(params, static), y0, rf_table, factors


def run_loop(
    problem,
    y0,
    rf_table,
    factors,
    settings: RunSettings,
    n_beta: int,
    devices,
    checkpoint,
    checkpoint_every: float,
    resume,
    batched: bool = False,
):
    """Run the annealing loop of `problem` from the flat initial paths `y0` (lanes a
    multiple of the `devices`), or of a group of problems of one structure and shapes
    with a leading axis of settings on every array (`batched`, as a sweep does): chunk by
    chunk, with checkpoints to `checkpoint` and a resume from `resume` (folders, or None).

    **Returns:** `(state, stats, partial)`: the final loop state on the host, the run's
    timings and device count, and whether it was interrupted.
    """
    config = settings.loop_config(n_beta)
    group = _lanes_per_group(
        problem, y0, rf_table, factors, config, devices, batched, settings.group_size
    )
    y0 = _pad_lanes(y0, -(-y0.shape[-2] // group) * group)
    fps = fingerprints(problem, y0, rf_table, factors, config, settings.n_paths, len(devices))
    fps["lanes"]["lanes per group"] = group
    hosts = Hosts(devices)
    problem, y0, rf_table, factors = _place(problem, y0, rf_table, factors, devices, hosts, batched)
    state, compile_time, run_time, partial = _run_chunks(
        problem,
        y0,
        rf_table,
        factors,
        config,
        devices,
        fps,
        checkpoint,
        checkpoint_every,
        resume,
        batched,
        settings.check_memory,
        group,
    )
    stats = {
        "run_time": run_time,
        "compile_time": compile_time,
        "n_devices": len(devices),
        "lanes_per_group": group,
    }
    return hosts.get(state), stats, partial


def _nbytes(tree) -> int:
    return sum(int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize for a in jtu.tree_leaves(tree))


def available_memory(devices) -> tuple[int | None, str]:
    """The bytes free for a run on `devices` and where: an accelerator's free memory (its
    limit less what is in use, over the devices), else the host's available memory
    (Linux's MemAvailable). `(None, where)` where unknown."""
    device = devices[0]
    if device.platform != "cpu":
        try:
            stats = [d.memory_stats() or {} for d in devices]
            free = sum(s["bytes_limit"] - s.get("bytes_in_use", 0) for s in stats)
            return int(free), f"{len(devices)} {device.platform} device(s)"
        except (KeyError, AttributeError, RuntimeError):
            return None, device.platform
    return host_memory(), "the host"


def memory_estimate(problem, schedule, settings: RunSettings, devices) -> tuple[int, int]:
    """`(fixed, per_lane)`: the bytes of a run's loop state (from `jax.eval_shape` of
    `init_loop` at one and two lanes, nothing allocated) and of each lane's initial path,
    its draw and its records on the host."""
    config = settings.loop_config(schedule.n_beta)
    dtype = settings.dtype
    problem = cast_floating(problem, dtype)
    flat = eqx.filter_eval_shape(
        lambda k: settings.minimiser.flatten(problem, problem.init(k)), jr.key(0)
    )
    rf = jax.ShapeDtypeStruct(np.shape(schedule.rf), dtype)
    factors = jax.ShapeDtypeStruct((schedule.n_beta,), dtype)

    def state_bytes(lanes):
        y0 = jax.ShapeDtypeStruct((lanes, flat.size), dtype)
        state = eqx.filter_eval_shape(init_loop, problem, y0, rf, factors, config, devices[:1])
        return _nbytes(state)

    one, two = state_bytes(1), state_bytes(2)
    per_lane = two - one
    # the initial paths, their draws (unknowns) and a host copy of each lane's records
    per_lane += 2 * flat.size * dtype.itemsize + per_lane
    return one - (two - one), per_lane


def _check_compiled_memory(compiled, devices) -> None:
    """After the compile, before the first chunk: refuse a loop whose working memory and
    outputs (XLA's memory analysis of the compiled program; the inputs are already
    allocated) exceed the memory still free — the eval_shape estimate before the start
    counts the state only, and a minimiser's working arrays (Levenberg–Marquardt's banded
    normal equations) can be twice that."""
    compiled = getattr(compiled, "compiled", compiled)  # equinox's wrapper of jax's
    try:
        analysis = compiled.memory_analysis()
        # the outputs that reuse a donated input's buffers need no more memory
        alias = getattr(analysis, "alias_size_in_bytes", 0)
        need = int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes - alias)
    except (AttributeError, NotImplementedError, RuntimeError, TypeError):
        return  # a backend without the analysis
    free, where = available_memory(devices)
    if free is not None and need > free:
        raise ValueError(
            f"The compiled annealing loop needs {format_bytes(need)} more (its working "
            f"arrays and outputs, by XLA's memory analysis); {format_bytes(free)} are free "
            f"on {where}. Pass fewer paths, or check_memory=False (the command line's "
            "--force) to try anyway."
        )


def check_resources(problem, schedule, settings: RunSettings, devices, checkpoint, n_settings=1):
    """Refuse, before anything is allocated, a run whose loop state cannot fit in the
    memory available (the estimate and the largest number of paths that fits in the
    message), or whose checkpoint cannot fit on its disk."""
    settings.check_problem(problem, schedule)
    fixed, per_lane = memory_estimate(problem, schedule, settings, devices)
    lanes = settings.n_paths * n_settings
    need = n_settings * fixed + lanes * per_lane
    free, where = available_memory(devices)
    if free is not None and need > free:
        fits = max((free // n_settings - fixed) // per_lane, 0) if free > fixed else 0
        raise ValueError(
            f"The run needs at least {format_bytes(need)} ({format_bytes(per_lane)} a path: "
            f"its loop state by jax.eval_shape, initial path and records) for {lanes:,} paths; "
            f"{format_bytes(free)} are free on {where}: at most {fits:,} paths fit"
            + (f" per setting ({n_settings} settings)" if n_settings > 1 else "")
            + ". Pass fewer paths, or check_memory=False (the command line's --force) to "
            "try anyway."
        )
    if checkpoint is not None:
        folder = os.fspath(checkpoint)
        while folder and not os.path.exists(folder):
            folder = os.path.dirname(folder)
        # a checkpoint is written beside the last one, then renamed over it
        disk = 2 * (n_settings * fixed + lanes * (per_lane // 2))
        free_disk = shutil.disk_usage(folder or ".").free
        if disk > free_disk:
            raise ValueError(
                f"The run's checkpoints need about {format_bytes(disk)} on the disk of "
                f"{folder or '.'}; {format_bytes(free_disk)} are free there. Free some space or "
                "write elsewhere."
            )
    return need
