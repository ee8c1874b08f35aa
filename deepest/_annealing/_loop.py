"""The compiled annealing loop: every path a lane of one `lax.while_loop`.

Each path is a lane of a `jax.vmap`. A lane holds its own β index and its own solver state
(L-BFGS, or Levenberg–Marquardt: see `_minimiser/`), and takes one step (one evaluation of
the action: line search and trust region run across steps, not inside them) per iteration
of a single `lax.while_loop`. The loop's step counter is passed to the solver; L-BFGS uses
it as every lane's memory slot. When a lane's minimisation at its β meets the stopping
rule, the lane records its action levels, moves to the next β (R_f ← α R_f) from its
minimum and resets its solver, while the other lanes carry on. So the loop runs for the
largest *total* number of steps of any path, not the sum over β of the slowest path at
each β: a path that is slow at one β is fast at another, and no lane waits for the batch
to finish a β. A lane that turns non-finite leaves at once. The loop body is written once,
for one problem's lanes (`_problem_lanes`); a sweep's settings (problems of one structure
and shapes) are a `jax.vmap` of it, every lane of every setting stepping at the same loop
step. With several devices the lanes (or settings) are split between them by
`jax.shard_map`, and each device runs its own loop.
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PyTree

from .._misc import renamed_keywords
from ._minimiser import AbstractMinimiser, StepInfo
from ._problem import AbstractProblem
from ._progress import AbstractProgressMeter
from ._solution import StopCode


class _Lane(eqx.Module):
    """The state of one path (one lane of the vmap)."""

    y: Float[Array, " n"]
    minimum: Float[Array, " n"]  # the minimum of the last finished β (y0 before)
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
    saved: Float[Array, "n_save n"]  # no rows without saved β's


class LoopConfig(eqx.Module):
    """The settings of the annealing loop, all static: one compile per settings."""

    n_beta: int = eqx.field(static=True)
    save_betas: tuple[int, ...] = eqx.field(static=True)
    ftol: float = eqx.field(static=True)
    gtol: float = eqx.field(static=True)
    max_evaluations: int = eqx.field(static=True)
    minimiser: AbstractMinimiser = eqx.field(static=True)
    progress_meter: AbstractProgressMeter = eqx.field(static=True)

    @renamed_keywords(max_steps="max_evaluations")
    def __init__(self, n_beta, save_betas, ftol, gtol, max_evaluations, minimiser, progress_meter):
        # a written `__init__` only to read the former keyword `max_steps`
        self.n_beta = n_beta
        self.save_betas = save_betas
        self.ftol = ftol
        self.gtol = gtol
        self.max_evaluations = max_evaluations
        self.minimiser = minimiser
        self.progress_meter = progress_meter


def _stop_reason(info: StepInfo, lane: _Lane, gmax, grad_start, steps, config: LoopConfig):
    """The stopping rule of one step (`gmax`: max |∇A| at the accepted point): a
    `StopCode`, or −1 to go on."""
    f = info.action
    finite = jnp.isfinite(f) & jnp.isfinite(gmax)
    # Relative to the action without a floor, so that an action of 1e-7 is minimised as
    # well as one of 1e3; and only when the local model agrees that little is left.
    small = config.ftol * jnp.abs(f)
    decrease = info.accepted & ~info.first & (lane.action_before - f <= small)
    decrease = decrease & (info.predicted_decrease <= small)
    gradient = info.accepted & (gmax <= config.gtol * grad_start)
    # A line search that fails where the model expects at most ftol·|A| more: the
    # decrease left is below the rounding of A (float32), the point a minimum to ftol.
    floor = info.failed & (info.predicted_decrease <= small)
    reasons = [
        (info.first & ~finite, StopCode.non_finite),
        (gradient, StopCode.converged_gradient),
        (decrease | floor, StopCode.converged_decrease),
        (info.failed, StopCode.stalled),
        (steps >= config.max_evaluations, StopCode.max_steps),
    ]
    code = jnp.array(-1, jnp.int32)
    for hit, reason in reversed(reasons):
        code = jnp.where(hit, jnp.int32(reason), code)
    return code


class LoopState(eqx.Module):
    """Everything the annealing loop carries from one step to the next (arrays only), so
    that a run stopped between chunks (see [`deepest.annealing.advance_loop`][]) can be
    saved and resumed exactly: each lane's point, solver state (e.g. L-BFGS memory), β,
    step counts and records, and the loop's step counters (one per device)."""

    lanes: _Lane
    loop_steps: Int[Array, " n_devices"]
    lane_steps: Int[Array, " n_devices"]


def _lane_functions(problem, rf_table, config: LoopConfig, shared):
    """`init_lane(y)` and `step_lane(lane, loop_step)` of one problem's lanes (`shared`:
    the minimiser's `prepare`)."""
    minimiser = config.minimiser
    n_beta = config.n_beta
    save_betas = jnp.asarray(config.save_betas, dtype=jnp.int32).reshape(-1)
    betas = jnp.arange(n_beta, dtype=jnp.int32)

    def init_lane(y):
        dtype = y.dtype
        nan = jnp.full((n_beta,), jnp.nan, dtype)
        return _Lane(
            y=y,
            minimum=y,
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
        gmax = jnp.max(jnp.abs(info.grad))
        grad_start = jnp.where(info.first, gmax, lane.grad_start)
        steps = lane.steps + 1
        code = _stop_reason(info, lane, gmax, grad_start, steps, config)
        done = active & (code >= 0)
        bad = done & (code == StopCode.non_finite)
        at_beta = (betas == beta) & done
        next_beta = jnp.where(bad, n_beta, beta + 1)
        following = jnp.minimum(next_beta, n_beta - 1)
        meas, model = info.errors

        def record(new, old):
            return jnp.where(at_beta, jnp.where(bad, jnp.nan, new), old)

        new = _Lane(
            y=jnp.where(active, y, lane.y),
            minimum=jnp.where(done & ~bad, y, lane.minimum),
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
            saved=_save(lane.saved, save_betas, beta, done & ~bad, y),
        )
        return new, done, active

    return init_lane, step_lane


def _save(saved, save_betas, beta, done, y):
    """`saved` with `y` written to the row of `beta` if it finished (`done`) and is one of
    the sorted `save_betas`: one row written, not the whole array selected."""
    if save_betas.shape[0] == 0:
        return saved
    row = jnp.minimum(jnp.searchsorted(save_betas, beta), save_betas.shape[0] - 1)
    hit = done & (save_betas[row] == beta)
    return saved.at[row].set(jnp.where(hit, y, saved[row]))


def _problem_lanes(static, config: LoopConfig):
    """The loop over the lanes of one problem, given its arrays `params` (its structure
    `static`): `prepare` (what the lanes share), `init` (the lanes' initial states, with
    the solver states' non-arrays) and `step`, the loop body, which steps every lane once.
    A sweep's settings are a vmap of these (`_over_settings`)."""

    def functions(params, rf_table, shared):
        return _lane_functions(eqx.combine(params, static), rf_table, config, shared)

    def prepare(params, y0, rf_table, factors):
        return config.minimiser.prepare(eqx.combine(params, static), y0, rf_table, factors)

    def init(params, y0, rf_table, shared):
        init_lane, _ = functions(params, rf_table, shared)
        return eqx.filter_vmap(init_lane)(y0)

    def step(params, rf_table, shared, lanes, loop_step, static_lanes):
        _, step_lane = functions(params, rf_table, shared)
        lanes, done, active = eqx.filter_vmap(lambda lane: step_lane(lane, loop_step))(
            eqx.combine(lanes, static_lanes)
        )
        return eqx.filter(lanes, eqx.is_array), done, active

    return prepare, init, step


def _over_settings(fn, settings: bool, in_axes=0):
    """`fn` vmapped over a leading axis of settings if there is one."""
    return jax.vmap(fn, in_axes=in_axes) if settings else fn


def _init(params, static, y0, rf_table, factors, config: LoopConfig, settings: bool, *given):
    """The loop state before the first step (`settings`: along a leading axis of them;
    `given`: the run's `shared`, if made already)."""
    prepare, init, _ = _problem_lanes(static, config)

    def arrays(params, y0, rf_table, factors, *given):
        # A solver state may hold non-arrays (e.g. a jaxpr): only the arrays are carried
        # through the loop (and saved); the rest is rebuilt from the problem each time.
        shared = given[0] if given else prepare(params, y0, rf_table, factors)
        return eqx.filter(init(params, y0, rf_table, shared), eqx.is_array)

    lanes = _over_settings(arrays, settings)(params, y0, rf_table, factors, *given)
    zero = jnp.zeros(y0.shape[:-2] + (1,), jnp.int32)
    return LoopState(lanes, zero, zero)


def _advance(
    params,
    static,
    y0,
    rf_table,
    factors,
    handle,
    state,
    stop_at,
    config: LoopConfig,
    settings,
    shared=None,
) -> LoopState:
    """Run the loop from `state` until every lane has finished its schedule, the loop has
    taken `n_beta · max_evaluations` steps, or it has taken `stop_at` steps in all.

    With `settings` (a leading axis of them on `params`, `y0`, `rf_table`, `factors` and
    the lanes) the body is the vmap of one problem's body: every lane of every setting
    steps at the same loop step, so that each setting's lanes step exactly as in a run of
    their own. `shared`: the minimiser's `prepare` of the run if made already (else made
    here, at every chunk)."""
    prepare, init, step = _problem_lanes(static, config)
    if shared is None:
        shared = _over_settings(prepare, settings)(params, y0, rf_table, factors)
    one = (params, y0, rf_table, shared)
    if settings:
        one = jax.tree.map(lambda a: a[0], one)
    shapes = eqx.filter_eval_shape(init, *one)
    static_lanes = eqx.filter(shapes, lambda x: isinstance(x, jax.ShapeDtypeStruct), inverse=True)

    def step_lanes(params, rf_table, shared, lanes, loop_step):
        return step(params, rf_table, shared, lanes, loop_step, static_lanes)

    step_lanes = _over_settings(step_lanes, settings, in_axes=(0, 0, 0, 0, None))
    n_beta = config.n_beta
    limit = jnp.minimum(stop_at, n_beta * config.max_evaluations)

    def cond(carry):
        lanes, loop_steps, _ = carry
        return jnp.any(lanes.beta < n_beta) & (loop_steps < limit)

    def body(carry):
        lanes, loop_steps, lane_steps = carry
        lanes, done, active = step_lanes(params, rf_table, shared, lanes, loop_steps)
        config.progress_meter.update(handle, jnp.sum(done), jnp.min(lanes.beta))
        return lanes, loop_steps + 1, lane_steps + jnp.sum(active, axis=-1, dtype=jnp.int32)

    # One loop counter for every setting; the lane counts are each setting's.
    carry = (state.lanes, state.loop_steps.reshape(-1)[0], state.lane_steps[..., 0])
    lanes, loop_steps, lane_steps = jax.lax.while_loop(cond, body, carry)
    loop_steps = jnp.broadcast_to(loop_steps, lane_steps.shape)
    return LoopState(lanes, loop_steps[..., None], lane_steps[..., None])


def loop_finished(state: LoopState, config: LoopConfig) -> bool:
    """Whether the loop of `state` has ended on every device: all of a device's lanes
    through their schedule, or its loop at the step limit. Reads the state to the host.

    `state` may also be the pair `(beta, loop_steps)` of its lanes' β indices and its step
    counters, already on the host."""
    if isinstance(state, LoopState):
        state = (state.lanes.beta, state.loop_steps)
    beta, loop_steps = state
    loop_steps = np.asarray(loop_steps).reshape(-1)
    beta = np.asarray(beta).reshape(loop_steps.shape[0], -1)
    budget = config.n_beta * config.max_evaluations
    done = np.all(beta >= config.n_beta, axis=1) | (loop_steps >= budget)
    return bool(np.all(done))


def loop_records(state: LoopState):
    """The records of a loop `state`: the lanes' points, action levels, errors, stop
    reasons, iterations and saved points, as [`deepest.annealing.anneal_lanes`][] returns."""
    lanes = state.lanes
    return (
        lanes.y,
        lanes.action,
        lanes.measurement_error,
        lanes.model_error,
        lanes.stop_reason,
        lanes.iterations,
        lanes.saved,
    )


def _on_devices(fn, devices, split: Sequence[bool]):
    """`fn` split over `devices` by `jax.shard_map` when there are several: the positional
    arguments marked in `split` along their leading axis (lanes, or settings), the others
    replicated; the outputs along their leading axis."""
    if len(devices) <= 1:
        return fn
    from jax.sharding import Mesh, PartitionSpec as P

    return jax.shard_map(
        fn,
        mesh=Mesh(np.asarray(devices), ("paths",)),
        in_specs=tuple(P("paths") if s else P() for s in split),
        out_specs=P("paths"),
        check_vma=False,
    )


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def anneal_lanes(
    problem: AbstractProblem,
    y0: Float[Array, "lanes n"],
    rf_table: Array,
    factors: Float[Array, " n_beta"],
    handle: Int[Array, ""],
    config: LoopConfig,
    devices: Sequence[jax.Device],
):
    """The compiled loop of [`deepest.anneal`][]: anneal the flat initial paths `y0`.

    One program per problem structure, shapes and `config` (a filter-jitted function, so
    repeated runs of the same shapes reuse it; `eqx.debug.get_num_traces(anneal_lanes)`
    counts its traces). The lanes are split over `devices` by `jax.shard_map` when there
    are several (`y0`'s length must then be a multiple of their number). The same loop
    body as [`deepest.annealing.advance_loop`][]'s, in one chunk.

    **Returns:** `(records, loop_steps, lane_steps)`: the lanes' final points, action
    levels, errors, stop reasons, iterations and saved points, and the loop's step
    counts (one per device).
    """
    params, static = eqx.partition(problem, eqx.is_array)

    def run(params, y0, rf_table, factors, handle):
        state = _init(params, static, y0, rf_table, factors, config, False)
        limit = jnp.asarray(config.n_beta * config.max_evaluations, jnp.int32)
        args = (params, static, y0, rf_table, factors, handle, state, limit, config, False)
        state = _advance(*args)
        return loop_records(state), state.loop_steps, state.lane_steps

    split = (False, True, False, False, False)
    return _on_devices(run, devices, split)(params, y0, rf_table, factors, handle)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def init_loop(
    problem: AbstractProblem,
    y0: Float[Array, "lanes n"],
    rf_table: Array,
    factors: Float[Array, " n_beta"],
    config: LoopConfig,
    devices: Sequence[jax.Device],
    settings: bool = False,
    shared: PyTree = None,
) -> LoopState:
    """The [`deepest.annealing.LoopState`][] of the annealing loop before its first step:
    every lane at its initial path `y0`, at β = 0, with a fresh solver.

    With `settings=True` every array of `problem`, `y0`, `rf_table` and `factors` has a
    leading axis of settings (problems of one structure and shapes, e.g. the points of a
    sweep), vmapped: one program for all of them, the settings split over `devices` (their
    number a multiple of the devices'). `shared`: what [`deepest.annealing.prepare_loop`][]
    gave for the run (`None`: made from `y0`; lanes that are a part of a run's must pass
    the run's)."""
    params, static = eqx.partition(problem, eqx.is_array)
    given = () if shared is None else (shared,)

    def run(params, y0, rf_table, factors, *given):
        return _init(params, static, y0, rf_table, factors, config, settings, *given)

    # Split over the devices: every argument along the settings, or the lanes.
    split = (True,) * 4 if settings else (False, True, False, False)
    split += (settings,) * len(given)
    return _on_devices(run, devices, split)(params, y0, rf_table, factors, *given)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def advance_loop(
    problem: AbstractProblem,
    y0: Float[Array, "lanes n"],
    rf_table: Array,
    factors: Float[Array, " n_beta"],
    handle: Int[Array, ""],
    state: LoopState,
    stop_at: Int[Array, ""],
    config: LoopConfig,
    devices: Sequence[jax.Device],
    settings: bool = False,
    shared: PyTree = None,
) -> LoopState:
    """Run the annealing loop from `state` for at most `stop_at − state.loop_steps` more
    steps (one chunk), then return to the host; the loop is the same whichever chunks it
    is cut into, so a run cut into chunks (and stopped, saved and resumed between them)
    ends bit for bit where a run in one chunk does. `stop_at` is traced: one program for
    every chunk. `settings` as for [`deepest.annealing.init_loop`][]: the loop body is
    then the vmap over the settings of one problem's body. `shared`: what
    [`deepest.annealing.prepare_loop`][] gave for this run (`None`: made again at each
    chunk; a run cut into groups of lanes must pass it, since the minimiser's `prepare`
    may read the first initial path)."""
    params, static = eqx.partition(problem, eqx.is_array)
    given = () if shared is None else (shared,)

    def run(params, y0, state, rf_table, factors, handle, stop_at, *given):
        args = (params, static, y0, rf_table, factors, handle, state, stop_at, config, settings)
        return _advance(*args, *given)

    # Split over the devices: every argument but the handle and stop_at along the
    # settings, or the lanes and their state.
    split = (True,) * 5 + (False, False) if settings else (False, True, True) + (False,) * 4
    split += (settings,) * len(given)
    run = _on_devices(run, devices, split)
    return run(params, y0, state, rf_table, factors, handle, stop_at, *given)


@eqx.filter_jit
def prepare_loop(
    problem: AbstractProblem,
    y0: Float[Array, "lanes n"],
    rf_table: Array,
    factors: Float[Array, " n_beta"],
    config: LoopConfig,
    settings: bool = False,
) -> PyTree:
    """What every lane of a run shares (the minimiser's `prepare`: e.g. L-BFGS's
    preconditioner, from the first initial path), made once for the run and passed to
    [`deepest.annealing.advance_loop`][] at every chunk. `settings` as for
    [`deepest.annealing.init_loop`][]."""
    params, static = eqx.partition(problem, eqx.is_array)
    prepare, _, _ = _problem_lanes(static, config)
    return _over_settings(prepare, settings)(params, y0, rf_table, factors)
