"""The entry of variational annealing: [`deepest.anneal`][], with its checks (the run
itself: `_runner.py`)."""

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, PRNGKeyArray, PyTree

from .._misc import renamed_keywords
from ._minimiser import AbstractMinimiser
from ._problem import AbstractProblem
from ._progress import AbstractProgressMeter
from ._runner import RunSettings, check_checkpointing, check_resources, run_loop
from ._schedule import AnnealSchedule
from ._solution import AnnealResult, check_anneal_throw


@renamed_keywords(max_steps="max_evaluations")
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
    max_evaluations: int = 5000,
    minimiser: AbstractMinimiser | None = None,
    dtype=None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool | AbstractProgressMeter = True,
    throw: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: float = 60.0,
    resume: str | os.PathLike | None = None,
    check_memory: bool = True,
    group_size: int | None = None,
) -> AnnealResult:
    r"""Variational annealing: minimise `problem.action(X, R_f)` for R_f = rf0·α^β, β = 0…

    Each β is minimised by the `minimiser` (L-BFGS by default) from the previous β's
    minimum; the first from `problem.init` draws (or `init`). All `n_paths` paths run
    together in one compiled program ([`deepest.annealing.anneal_lanes`][]), each with its
    own β, split over `devices`. Each step is one evaluation of the action A. The
    minimisation of a β stops (`result.result`, [`deepest.RESULTS`][] codes; the rule that
    fired in `result.converged_by`) when

    - the last accepted step lowered A by at most `ftol`·|A| **and** the decrease the
      minimiser's local model still predicts (½ gᵀHg for L-BFGS) is at most `ftol`·|A|:
      relative to A itself, so that an action of 1e-7 is minimised as well as one of 1e3
      (also when the line search fails along a direction on which the model expects at
      most `ftol`·|A|: what is left is below A's rounding);
    - or max|∇A| ≤ `gtol` · max|∇A| at the β's first point;
    - or the line search / trust region stalls, or after `max_evaluations` evaluations (then
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
    - `max_evaluations`: the most evaluations of the action (minimiser steps) per β and
      path (formerly `max_steps`, still accepted with a `DeprecationWarning`).
    - `minimiser`: the minimiser of each β: [`deepest.LBFGS`][] (default, any problem)
      or [`deepest.LevenbergMarquardt`][] (problems with banded residuals, e.g.
      [`deepest.Assimilation`][]: far fewer steps, each a block-banded linear solve).
    - `dtype`: float64 (default; needs x64 on) or float32.
    - `devices`: devices to split the paths over (default: all of the default backend).
    - `progress`: how to show progress: True (default) for a tqdm bar of finished
      (path, β) minimisations ([`deepest.TqdmProgressMeter`][]), False for none
      ([`deepest.NoProgressMeter`][]), or an [`deepest.AbstractProgressMeter`][].
    - `throw`: raise if every path turns non-finite (an `equinox.EquinoxRuntimeError`
      naming the [`deepest.RESULTS`][] message); with `False` return the result, whose
      codes say so. Some paths' failures are always returned as codes.
    - `checkpoint`: a folder to write the loop's exact state to (`checkpoint.eqx`,
      atomically) every `checkpoint_every` seconds and when interrupted.
    - `checkpoint_every`: seconds between checkpoints (> 0).
    - `resume`: a folder holding a checkpoint of this same run (same problem, initial
      paths, schedule, settings and device count): the loop goes on from it and ends
      bit for bit as the uninterrupted run would (only the timings differ). A checkpoint
      of another run is refused, naming what differs.
    - `check_memory`: before anything is allocated, estimate the loop's memory (its state
      by `jax.eval_shape`, per path) and refuse a run that cannot fit in the memory free
      on the devices, or whose checkpoints cannot fit on their disk, naming the estimate
      and the most paths that fit. `False` tries anyway.
    - `group_size`: on one device, run the paths in groups of at most this many lanes, one
      group after another, each through the same compiled program (the results are those
      of one program of all paths: the paths never interact). Default: on a CPU, as many
      as fit 2 MiB of loop state (a step's cost per path grows once the lanes' state
      outgrows the core's cache: BENCHMARKS.md, "Lanes at cache speed"); on an
      accelerator, all paths in one group. With several devices each runs its share as one
      group.

    The loop runs in chunks of a fraction of a second (one compiled program for every
    chunk), so that the host can act between them. Ctrl-C (SIGINT) stops the run at the
    end of the chunk and returns what is finished: a result with `partial=True` whose
    levels of the β's not finished are NaN (`result` `not_reached`) and whose
    unknowns are each path's minimum at the last β it finished; a second Ctrl-C raises at
    once. [`deepest.annealing.INTERRUPT`][] set from another thread does what Ctrl-C
    does.

    **Returns:** an [`deepest.AnnealResult`][].
    """
    settings = RunSettings.check(
        schedule,
        n_paths,
        save_betas,
        ftol,
        gtol,
        max_evaluations,
        minimiser,
        dtype,
        progress,
        check_memory,
        group_size,
    )
    check_checkpointing(checkpoint_every, resume)
    if key is None and init is None:
        raise ValueError("Pass a PRNG `key` for the initial paths, or the paths as `init`.")
    devices = tuple(jax.devices() if devices is None else devices)
    if check_memory:
        check_resources(problem, schedule, settings, devices, checkpoint)
    problem, y0, rf_table, factors = settings.start(problem, schedule, key, init)

    # As many lanes as a multiple of the devices: the last path repeated.
    padded = -(-settings.n_paths // len(devices)) * len(devices)
    if padded > settings.n_paths:
        y0 = jnp.concatenate([y0, jnp.repeat(y0[-1:], padded - settings.n_paths, axis=0)])
    state, stats, partial = run_loop(
        problem,
        y0,
        rf_table,
        factors,
        settings,
        schedule.n_beta,
        devices,
        checkpoint,
        checkpoint_every,
        resume,
    )
    result = settings.result(problem, schedule, state, stats, partial)
    check_anneal_throw(result, throw)
    return result
