"""Long runs that survive (issue 14), through the library: chunked loop, Ctrl-C, checkpoints,
exact resume, sweeps as one program per shape. The command line's long runs are in
`test_cli_long_runs.py`."""

import os
import signal

import equinox as eqx
import jax
import jax.random as jr
import numpy as np
import pytest

import deepest

from .helpers import same_arrays, small_problem

_ARRAYS = ("action", "measurement_error", "model_error", "converged_by", "iterations")


class _InterruptAfter(deepest.AbstractProgressMeter):
    """Sends this process a SIGINT once `n` (path, β) minimisations have finished, from
    inside the compiled loop: an interrupt at a reproducible point of the run."""

    n: int

    def open(self, total):
        _InterruptAfter.count, _InterruptAfter.sent = 0, False
        return 0

    def update(self, handle, n_done, lowest_beta):
        def count(n_done):
            _InterruptAfter.count += int(n_done)
            if _InterruptAfter.count >= self.n and not _InterruptAfter.sent:
                _InterruptAfter.sent = True
                os.kill(os.getpid(), signal.SIGINT)

        jax.debug.callback(count, n_done)

    def close(self, handle):
        pass


@pytest.fixture(scope="module")
def run():
    problem = small_problem()
    schedule = deepest.AnnealSchedule(1e-3, 2.0, 12)
    full = deepest.anneal(problem, schedule, 6, jr.key(1), progress=False)
    return problem, schedule, full


def test_interrupt_gives_a_partial_result_and_resume_is_bit_identical(run, tmp_path):
    problem, schedule, full = run
    with pytest.warns(UserWarning, match="interrupted"):
        part = deepest.anneal(
            problem, schedule, 6, jr.key(1), progress=_InterruptAfter(20), checkpoint=tmp_path
        )
    assert part.partial and not full.partial
    # Every finished (β, path) equals the uninterrupted run's; the rest is marked.
    done = np.asarray(part.result != deepest.RESULTS.not_reached)
    assert 20 <= done.sum() < done.size
    for name in _ARRAYS:
        assert np.array_equal(getattr(part, name)[done], getattr(full, name)[done]), name
    assert np.asarray(part.result == full.result)[done].all()
    assert np.all(np.isnan(part.action[~done]))
    # The unknowns of a partial result are each path's minimum at its last finished β.
    last = done.sum(axis=0) - 1
    for i in range(part.n_paths):
        if last[i] >= 0:
            level = problem.action(part.path_unknowns(i), schedule.rf[last[i]])
            assert float(level) == pytest.approx(part.action[last[i], i], rel=1e-12)
    part.save(tmp_path / "saved")
    assert deepest.load_result(tmp_path / "saved").partial

    resumed = deepest.anneal(problem, schedule, 6, jr.key(1), progress=False, resume=tmp_path)
    assert not resumed.partial
    for name in _ARRAYS:
        assert same_arrays(getattr(resumed, name), getattr(full, name)), name
    assert np.asarray(resumed.result == full.result).all()
    assert np.array_equal(resumed.paths, full.paths)
    assert np.array_equal(resumed.params["forcing"], full.params["forcing"])


def test_groups_of_lanes_equal_one_program_and_resume_bit_identically(run, tmp_path):
    """Paths run in groups of lanes one after another (`group_size`) end where one program
    of every path does, bit for bit, through an interrupt, a checkpoint and a resume."""
    problem, schedule, full = run
    assert full.stats["lanes_per_group"] == 6  # a small problem: one group on a CPU
    grouped = deepest.anneal(problem, schedule, 6, jr.key(1), progress=False, group_size=4)
    assert grouped.stats["lanes_per_group"] == 3  # two groups of three, not 4 + 2
    with pytest.warns(UserWarning, match="interrupted"):
        part = deepest.anneal(
            problem,
            schedule,
            6,
            jr.key(1),
            progress=_InterruptAfter(4),
            checkpoint=tmp_path,
            group_size=3,
        )
    done = np.asarray(part.result != deepest.RESULTS.not_reached)
    # stopped in the first group, the second not started
    assert 4 <= done[:, :3].sum() < done[:, :3].size and not done[:, 3:].any()
    with pytest.raises(ValueError, match="lanes per group"):
        deepest.anneal(problem, schedule, 6, jr.key(1), progress=False, resume=tmp_path)
    resumed = deepest.anneal(
        problem, schedule, 6, jr.key(1), progress=False, resume=tmp_path, group_size=3
    )
    for result in (grouped, resumed):
        assert not result.partial
        for name in _ARRAYS:
            assert same_arrays(getattr(result, name), getattr(full, name)), name
        assert np.array_equal(result.paths, full.paths)
    with pytest.raises(ValueError, match="group_size"):
        deepest.anneal(problem, schedule, 6, jr.key(1), group_size=0)


def test_chunks_run_one_program(run):
    problem, schedule, _ = run
    before = eqx.debug.get_num_traces(deepest.annealing.advance_loop)
    deepest.anneal(problem, schedule, 6, jr.key(2), progress=False)
    assert eqx.debug.get_num_traces(deepest.annealing.advance_loop) == before


def test_a_checkpoint_of_another_run_is_refused(run, tmp_path):
    problem, schedule, _ = run
    with pytest.warns(UserWarning):
        deepest.anneal(
            problem, schedule, 6, jr.key(1), progress=_InterruptAfter(10), checkpoint=tmp_path
        )
    other = deepest.AnnealSchedule(1e-3, 3.0, 12)
    with pytest.raises(ValueError, match="differs in schedule"):
        deepest.anneal(problem, other, 6, jr.key(1), progress=False, resume=tmp_path)
    with pytest.raises(ValueError, match="initial paths"):
        deepest.anneal(problem, schedule, 6, jr.key(7), progress=False, resume=tmp_path)
    with pytest.raises(ValueError, match="max_evaluations"):
        deepest.anneal(
            problem, schedule, 6, jr.key(1), progress=False, resume=tmp_path, max_evaluations=99
        )
    with pytest.raises(ValueError, match="n_paths"):
        deepest.anneal(problem, schedule, 5, jr.key(1), progress=False, resume=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint"):
        deepest.anneal(problem, schedule, 6, jr.key(1), resume=tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / deepest.annealing.CHECKPOINT).write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        deepest.anneal(problem, schedule, 6, jr.key(1), resume=tmp_path / "junk")


# -- sweeps --------------------------------------------------------------------------------


def test_sweep_runs_one_program_per_shape_and_equals_separate_runs():
    def problem(seed, observed):
        data = deepest.twin_experiment(
            deepest.models.Lorenz96(8.17), 8, 21, 0.05, observed, 0.4, jr.key(seed)
        )
        return deepest.Assimilation(deepest.models.Lorenz96(8.0), data, rm=6.25)

    problems = [problem(0, [0, 2, 4, 6]), problem(1, [0, 2, 4, 6]), problem(0, [0, 3, 6])]
    schedules = [deepest.AnnealSchedule(rf0, 2.0, 8) for rf0 in (1e-3, 1e-2, 1e-3)]
    results = deepest.sweep(problems, schedules, 3, jr.key(4), progress=False)
    assert [r.stats["program"] for r in results] == [0, 0, 1]
    for p, s, r in zip(problems, schedules, results, strict=True):
        alone = deepest.anneal(p, s, 3, jr.key(4), progress=False)
        # on a CPU each setting runs through the program of one problem, as alone
        for name in _ARRAYS:
            assert same_arrays(getattr(r, name), getattr(alone, name)), name
        assert np.array_equal(r.paths, alone.paths)
    with pytest.raises(ValueError, match="one schedule and one key per point"):
        deepest.sweep(problems, schedules[:2], 3, jr.key(4))
    with pytest.raises(ValueError, match="empty"):
        deepest.sweep([], schedules, 3, jr.key(4))


def _loop_inputs(problem, schedule, n_paths=4):
    """A run's flat initial paths, R_f table, factors and loop config (L-BFGS)."""
    minimiser = deepest.LBFGS()
    unknowns = jax.vmap(problem.init)(jr.split(jr.key(3), n_paths))
    y0 = jax.vmap(lambda u: minimiser.flatten(problem, u))(unknowns)
    rf = jax.numpy.asarray(schedule.rf)
    factors = jax.numpy.asarray(schedule.alpha ** np.arange(schedule.n_beta))
    config = deepest.annealing.LoopConfig(
        schedule.n_beta, (), 1e-10, 1e-9, 5000, minimiser, deepest.NoProgressMeter()
    )
    return minimiser, y0, rf, factors, config


def test_prepare_loop_is_the_minimisers_prepare(run):
    """What a run's lanes share, made once per run, is the minimiser's `prepare` of the
    whole run's initial paths (so groups of lanes share the first path's preconditioner)."""
    problem, schedule, _ = run
    minimiser, y0, rf, factors, config = _loop_inputs(problem, schedule)
    shared = deepest.annealing.prepare_loop(problem, y0, rf, factors, config)
    direct = minimiser.prepare(problem, y0, rf, factors)
    other = minimiser.prepare(problem, y0[1:], rf, factors)  # another first path
    leaves = jax.tree.leaves
    assert all(np.allclose(a, b, rtol=1e-12) for a, b in zip(leaves(shared), leaves(direct)))
    assert not all(np.allclose(a, b) for a, b in zip(leaves(shared), leaves(other)))


def test_each_chunk_reuses_the_loop_states_buffers(run):
    """The program that runs a chunk is given the loop state donated: the new state is
    written into the old one's buffers (XLA's memory analysis, which the memory check
    reads, counts the state once), the state given is consumed, and the chunk ends where
    `advance_loop` without donation ends, bit for bit."""
    from deepest._annealing._runner import _compiled_advance

    problem, schedule, _ = run
    _, y0, rf, factors, config = _loop_inputs(problem, schedule)
    devices = jax.devices("cpu")[:1]
    shared = deepest.annealing.prepare_loop(problem, y0, rf, factors, config)

    def fresh():
        return deepest.annealing.init_loop(problem, y0, rf, factors, config, devices, False, shared)

    zero = jax.numpy.asarray(0, jax.numpy.int32)
    fixed = (problem, y0, rf, factors, zero, zero + 7, config, devices, False, shared)
    state = fresh()
    advance = _compiled_advance((fixed, state))
    state_bytes = sum(a.nbytes for a in jax.tree.leaves(state))
    assert advance.compiled.memory_analysis().alias_size_in_bytes == state_bytes
    new = advance(fixed, state)
    assert all(a.is_deleted() for a in jax.tree.leaves(state))
    args = (problem, y0, rf, factors, zero, fresh(), zero + 7, config, devices, False, shared)
    expected = deepest.annealing.advance_loop(*args)
    assert int(new.loop_steps[0]) == 7
    assert all(same_arrays(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(expected)))
