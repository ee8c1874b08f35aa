"""Sweeps: many annealing problems (the points of a grid of settings) in few programs."""

import os
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PRNGKeyArray

from .._misc import renamed_keywords
from ._checkpoint import CHECKPOINT
from ._minimiser import AbstractMinimiser
from ._problem import AbstractProblem
from ._progress import AbstractProgressMeter
from ._runner import RunSettings, check_checkpointing, check_resources, run_loop
from ._schedule import AnnealSchedule
from ._solution import AnnealResult, SweepResult, check_anneal_throw


def _signature(problem, y0, rf_table) -> tuple:
    """What points must share to run in one program: structure, shapes and dtypes."""
    leaves = jtu.tree_leaves(eqx.filter(problem, eqx.is_array))
    return (
        jtu.tree_structure(problem),
        tuple((a.shape, a.dtype) for a in leaves),
        y0.shape,
        rf_table.shape,
    )


def _stack(trees):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


@renamed_keywords(max_steps="max_evaluations")
def sweep(
    problems: Sequence[AbstractProblem],
    schedules: AnnealSchedule | Sequence[AnnealSchedule],
    n_paths: int,
    keys: PRNGKeyArray | Sequence[PRNGKeyArray],
    *,
    save_betas: Sequence[int] | None = None,
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
) -> SweepResult:
    """Anneal every point of a sweep: [`deepest.anneal`][] of `problems[i]` with
    `schedules[i]` and `keys[i]`, with `n_paths` paths each and the same settings.

    Points whose problems have the same structure and shapes (e.g. other data of the same
    size, other weights, other R_f schedules of the same length) form a group with one
    compiled program, one index, one checkpoint and one resume; each further shape (e.g.
    another set of observed components) compiles once more. On an accelerator the group
    is one launch: a leading axis of settings is vmapped with the paths, so the problems,
    data, schedules and initial paths are arrays of that program. On one CPU, where a
    step's cost per lane grows with the lanes' memory, the group's points run one after
    another through the program of one problem, in groups of lanes sized to the cache
    (`group_size`, as in `anneal`): never slower than separate `anneal` calls
    (BENCHMARKS.md, "Lanes at cache speed"). Each point's result equals its own `anneal`
    run's (same key; bit for bit on a CPU): the points do not interact.

    **Arguments:** as [`deepest.anneal`][]; `schedules` and `keys` are one per point, or
    one for all (one key gives every point the same initial-path draws). `throw`: raise
    if every path of some point turned non-finite (as that point's own `anneal` would);
    with `False` return every point's result with its codes. With several
    `devices` (default: all of the default backend, on every process of a
    `jax.distributed` run) the points of a program are split over them.
    `checkpoint` is a folder in which each program ("group") writes its state to
    `group-K/checkpoint.eqx` every `checkpoint_every` seconds, on Ctrl-C and at its end;
    `resume` continues from such a folder: finished groups are read back, the running one
    continues where it stopped, bit for bit.

    **Returns:** a [`deepest.SweepResult`][]: one [`deepest.AnnealResult`][] per point, in
    order (`stats["run_time"]` is the time of the program that ran it, shared by its
    group; `stats["program"]` numbers that program). After Ctrl-C the interrupted group's
    results are `partial` and the points of groups not started are `None`.
    """
    problems = list(problems)
    n = len(problems)
    if n == 0:
        raise ValueError("`problems` is empty: a sweep needs at least one point.")
    schedules = [schedules] * n if isinstance(schedules, AnnealSchedule) else list(schedules)
    is_one_key = isinstance(keys, jax.Array) and jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
    keys = [keys] * n if is_one_key and keys.ndim == 0 else list(keys)
    if len(schedules) != n or len(keys) != n:
        raise ValueError(
            f"Give one schedule and one key per point (or one for all): {n} problems, "
            f"{len(schedules)} schedules, {len(keys)} keys."
        )
    check_checkpointing(checkpoint_every, resume)
    # Every point checked (and its paths drawn) before any annealing.
    settings = None
    for schedule in schedules:
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
    devices = tuple(jax.devices() if devices is None else devices)
    if check_memory:  # as if every point ran in one program: the most a sweep can need
        check_resources(problems[0], schedules[0], settings, devices, checkpoint, n_settings=n)
    starts = [settings.start(p, s, k, None) for p, s, k in zip(problems, schedules, keys)]
    groups: dict[tuple, list[int]] = {}
    for i, (problem, y0, rf_table, _) in enumerate(starts):
        groups.setdefault(_signature(problem, y0, rf_table), []).append(i)

    results: list[AnnealResult | None] = [None] * n
    for g, members in enumerate(groups.values()):
        # As many points as a multiple of the devices: the last one repeated.
        padded = members + members[-1:] * (-len(members) % len(devices))
        first = starts[members[0]][0]
        static = eqx.filter(first, eqx.is_array, inverse=True)
        params = _stack([eqx.filter(starts[i][0], eqx.is_array) for i in padded])
        problem = eqx.combine(params, static)
        y0, rf_table, factors = (_stack([starts[i][k] for i in padded]) for k in (1, 2, 3))
        folder = f"group-{g}"
        ck = None if checkpoint is None else os.path.join(os.fspath(checkpoint), folder)
        rs = None
        if resume is not None and os.path.isfile(os.path.join(resume, folder, CHECKPOINT)):
            rs = os.path.join(os.fspath(resume), folder)
        n_beta = schedules[members[0]].n_beta
        state, stats, partial = run_loop(
            problem,
            y0,
            rf_table,
            factors,
            settings,
            n_beta,
            devices,
            ck,
            checkpoint_every,
            rs,
            batched=True,
        )
        for j, i in enumerate(members):
            one = jax.tree.map(lambda a, j=j: a[j], state)
            results[i] = settings.result(starts[i][0], schedules[i], one, stats, partial)
            results[i].stats["program"] = g
        if partial:
            break
    for i, result in enumerate(results):
        if result is not None:
            check_anneal_throw(result, throw, f"sweep, point {i}")
    return SweepResult(tuple(results))
