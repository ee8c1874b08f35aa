"""Diagnostics: the warning of a model flat in the state before annealing, the warnings of
a result (a bounded parameter at its bound, non-finite paths) and of its Laplace
approximation (a Hessian not positive definite), and `load_result`'s problem check."""

import functools
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import deepest

from .helpers import small_problem

SCHEDULE = deepest.AnnealSchedule(rf0=1.0, alpha=2.0, n_beta=3)
FLAT_IN_THE_STATE = "derivative with respect to the state is zero"


@functools.cache
def _data():
    return deepest.twin_experiment(
        deepest.models.Lorenz96(8.17), 5, 11, 0.05, range(0, 5, 2), 0.4, jr.key(0)
    )


def _bounded(**kwargs):
    """A Lorenz-96 twin whose true forcing 8.17 lies above the bounds (3, 5)."""
    return deepest.Assimilation(
        deepest.models.Lorenz96(6.0),
        _data(),
        rm=1 / 0.4**2,
        estimate=("forcing",),
        bounds={"forcing": (3.0, 5.0)},
        **kwargs,
    )


def _floor():
    """A model whose derivative with respect to the state is zero almost everywhere."""
    return deepest.Assimilation(lambda t, x: jnp.floor(x), _data(), rm=1 / 0.4**2)


@functools.cache
def _annealed_bounded():
    problem = _bounded()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = deepest.anneal(problem, SCHEDULE, 2, jr.key(0), progress=False)
    return problem, result, [str(w.message) for w in caught]


@functools.cache
def _annealed_floor():
    # float32: `load_result` must compare the digest of the problem cast as the run cast it
    with pytest.warns(UserWarning, match=FLAT_IN_THE_STATE) as caught:
        result = deepest.anneal(_floor(), SCHEDULE, 2, jr.key(0), progress=False, dtype=jnp.float32)
    return result, [w.filename for w in caught if FLAT_IN_THE_STATE in str(w.message)]


def test_a_model_flat_in_the_state_warns_before_annealing():
    result, where = _annealed_floor()
    assert where == [__file__]  # the warning names the caller of anneal
    # the premise, by autodiff: the model's Jacobian at the initial path is zero, though
    # the model term's gradient is not (the residuals' differences depend on the states)
    problem = _floor()
    u = problem.init(jr.key(1))
    jacobian = jax.vmap(jax.jacrev(lambda x: problem.field(0.0, x, {})))(u["path"])
    assert np.all(np.asarray(jacobian) == 0)
    assert np.any(np.asarray(jax.grad(problem.model_error)(u)["path"]) != 0)


def test_lorenz96_does_not_warn():
    _, _, caught = _annealed_bounded()
    assert not [m for m in caught if FLAT_IN_THE_STATE in m]


def test_a_parameter_pinned_at_its_bound_is_flagged():
    problem, result, _ = _annealed_bounded()
    forcing = np.asarray(result.params["forcing"])
    assert 5.0 - forcing[result.best] <= 1e-6 * (5.0 - 3.0)  # the truth lies above
    # a path may end at either bound (here the other at the lower one: a local minimum)
    pinned = int(np.sum((5.0 - forcing <= 2e-6) | (forcing - 3.0 <= 2e-6)))
    lines = result.warnings()
    assert len(lines) == 1
    assert lines[0].startswith(f"parameter 'forcing' of the best path (path {result.best})")
    assert "upper bound 5" in lines[0] and f"{pinned} of 2 paths end on a bound" in lines[0]

    def with_forcing(value):
        return eqx.tree_at(lambda r: r.views["params"]["forcing"], result, np.full(2, value))

    assert with_forcing(4.0).warnings() == []
    assert with_forcing(3.0 + 3e-6).warnings() == []  # 1.5e-6 of the width inside
    (line,) = with_forcing(3.0 + 1e-6).warnings()
    assert "lower bound 3 " in line and "2 of 2 paths" in line
    # float32 allows √ε, 3.5e-4 of the width
    assert with_forcing(np.float32(3.0 + 6e-4)).warnings()[0].count("lower bound 3 ") == 1
    # without its problem a result does not know the bounds
    assert eqx.tree_at(lambda r: r.problem, result, None).warnings() == []


def test_non_finite_paths_are_counted():
    _, result, _ = _annealed_bounded()

    def mark(bad, code):
        return deepest.RESULTS.where(bad, deepest.RESULTS.nonfinite, code)

    bad = jnp.asarray([[False, True]] * SCHEDULE.n_beta)
    codes = jax.vmap(jax.vmap(mark))(bad, result.result)
    broken = eqx.tree_at(lambda r: r.result, result, codes)
    assert broken.finite.tolist() == [True, False]
    assert broken.warnings()[0].startswith("1 of 2 paths (50%) turned non-finite")


@functools.cache
def _linear():
    """A damped rotation in D = 2, component 0 observed: A₀ is quadratic, its Hessian
    positive definite everywhere."""
    rotation = jnp.asarray([[-0.1, 1.0], [-1.0, -0.1]])
    times = np.linspace(0.0, 1.0, 6)
    data = deepest.Observations(times, np.cos(times)[:, None], observed=[0])
    return deepest.Assimilation(lambda t, x: rotation @ x, data, rm=1.0, dim=2)


def _saddle_prior(u):
    # a curvature of −10⁶ in one state, only where that state is above 50 (path 1 below)
    x = u["path"][2, 1]
    return -1e6 * x**2 * jnp.where(x > 50.0, 1.0, 0.0)


def _smallest_eigenvalue(problem, u):
    """The smallest eigenvalue of the dense Hessian of A₀ + the prior at one path."""
    y, unravel = ravel_pytree(u)

    def a0(y):
        return problem.unnormalised_action(unravel(y), 1.0) + _saddle_prior(unravel(y))

    return jnp.linalg.eigvalsh(jax.hessian(a0)(y))[0]


def test_a_hessian_not_positive_definite_is_reported():
    problem = _linear()
    unknowns = jax.vmap(problem.init)(jr.split(jr.key(0), 3))
    unknowns["path"] = unknowns["path"].at[1, 2, 1].set(100.0)
    lap = deepest.laplace(problem, unknowns, rf=1.0, prior=_saddle_prior)
    # the independent answer: the dense Hessian's smallest eigenvalue per path
    smallest = jax.jit(jax.vmap(functools.partial(_smallest_eigenvalue, problem)))(unknowns)
    assert (np.asarray(smallest) > 0).tolist() == [True, False, True]
    assert lap.positive_definite.tolist() == [True, False, True]
    (line,) = lap.warnings(best=1)
    assert line.startswith("Hessian of A₀ not positive definite at 1 of 3 paths ([1]; the best")
    assert "not the best path 0" in lap.warnings(best=0)[0]
    # by default the best path is the lowest A₀ among them
    default = int(np.argmin(lap.action0))
    assert f"best path {default}" in lap.warnings()[0]
    unknowns["path"] = unknowns["path"].at[1, 2, 1].set(0.0)
    positive = deepest.laplace(problem, unknowns, rf=1.0, prior=_saddle_prior)
    assert positive.positive_definite.all() and positive.warnings() == []


def test_load_result_refuses_another_problem(tmp_path):
    problem, result, _ = _annealed_bounded()
    result.save(tmp_path)
    assert deepest.load_result(tmp_path, problem).problem is problem
    with pytest.raises(ValueError, match=r"result.npz was computed for another problem \(its "):
        deepest.load_result(tmp_path, _bounded(steps_per_obs=2))  # other shapes
    other_data = deepest.Assimilation(
        deepest.models.Lorenz96(6.0),
        _data(),
        rm=1 / 0.3**2,
        estimate=("forcing",),
        bounds={"forcing": (3.0, 5.0)},
    )
    with pytest.raises(ValueError, match="the shapes agree, but its data, weights or settings"):
        deepest.load_result(tmp_path, other_data)
    # a result saved before the digest was recorded loads with any problem
    stats = {k: v for k, v in result.stats.items() if k != "problem"}
    eqx.tree_at(lambda r: r.stats, result, stats).save(tmp_path / "old")
    assert deepest.load_result(tmp_path / "old", other_data).problem is other_data


def test_load_result_casts_the_problem_as_the_run_did(tmp_path):
    result, _ = _annealed_floor()
    result.save(tmp_path)
    problem = _floor()  # float64; the run cast it to float32
    assert deepest.load_result(tmp_path, problem).problem is problem
    with pytest.raises(ValueError, match="computed for another problem"):
        deepest.load_result(tmp_path, _bounded())


def test_laplace_recognises_the_problem_a_float32_run_was_built_from():
    # The run cast the float64 problem to float32 and recorded that digest; laplace casts
    # the problem it is given the same way before comparing (it refused it before).
    problem = small_problem(n_times=11)
    schedule = deepest.AnnealSchedule(rf0=1e-2, alpha=2.0, n_beta=4)
    result = deepest.anneal(problem, schedule, 2, jr.key(0), progress=False, dtype=jnp.float32)
    lap = deepest.laplace(problem, result, throw=False)
    assert lap.unknowns["path"].dtype == jnp.float32
    other = eqx.tree_at(lambda p: p.data.values, problem, problem.data.values + 1.0)
    with pytest.raises(ValueError, match="annealed on another problem"):
        deepest.laplace(other, result)
