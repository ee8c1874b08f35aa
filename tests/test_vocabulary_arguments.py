"""One argument name per concept: `path` (a path's index), `t1` (an end time), `n_steps`
(layer maps), `max_evaluations` / `max_newton_steps` (what `max_steps` counted); the old
keywords still work, each with a `DeprecationWarning`, and give the same result. And
`PAMCResult.samples` in the reported quantities, the unknowns apart."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest
import deepest.annealing
import deepest.experiments as dx

from .helpers import small_problem

SCHEDULE = deepest.AnnealSchedule(1e-2, 10.0, 2)


@pytest.fixture(scope="module")
def annealed():
    problem = small_problem(n_times=11, bounds={"forcing": (4.0, 12.0)})
    result = deepest.anneal(problem, SCHEDULE, 2, jr.key(0), progress=False, max_evaluations=200)
    return problem, result


def _same(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_both_names_at_once_is_an_error():
    with pytest.raises(TypeError, match="n_layers"):
        deepest.residual_network(lambda x: -x, t1=1.0, n_steps=4, n_layers=4)


def test_residual_network_n_layers(getkey):
    field = eqx.nn.Linear(3, 3, key=getkey())
    new = deepest.residual_network(field, 1.0, n_steps=8)
    with pytest.warns(DeprecationWarning, match="n_layers"):
        old = deepest.residual_network(field, 1.0, n_layers=8)
    x = jr.normal(getkey(), (3,))
    np.testing.assert_array_equal(new(x), old(x))
    assert sum(new.stack_lengths) == sum(old.stack_lengths) == 8


def test_anneal_max_steps():
    problem = small_problem(n_times=11)
    new = deepest.anneal(problem, SCHEDULE, 2, jr.key(1), progress=False, max_evaluations=3)
    with pytest.warns(DeprecationWarning, match="max_steps"):
        old = deepest.anneal(problem, SCHEDULE, 2, jr.key(1), progress=False, max_steps=3)
    np.testing.assert_array_equal(new.action, old.action)
    np.testing.assert_array_equal(new.iterations, old.iterations)
    assert (new.iterations <= 3).all()


def test_sweep_max_steps():
    problems = [small_problem(n_times=11)] * 2
    kwargs = dict(progress=False, throw=False)
    new = deepest.sweep(problems, SCHEDULE, 1, jr.key(1), max_evaluations=3, **kwargs)
    with pytest.warns(DeprecationWarning, match="max_steps"):
        old = deepest.sweep(problems, SCHEDULE, 1, jr.key(1), max_steps=3, **kwargs)
    for a, b in zip(new, old, strict=True):
        np.testing.assert_array_equal(a.action, b.action)


def test_loop_config_and_legendre_max_steps():
    kwargs = dict(
        n_beta=2,
        save_betas=(),
        ftol=1e-10,
        gtol=1e-9,
        minimiser=deepest.LBFGS(),
        progress_meter=deepest.NoProgressMeter(),
    )
    with pytest.warns(DeprecationWarning, match="max_steps"):
        old = deepest.annealing.LoopConfig(max_steps=7, **kwargs)
    assert old == deepest.annealing.LoopConfig(max_evaluations=7, **kwargs)
    lagrangian = lambda t, x, v: 0.5 * jnp.sum(v**2) + jnp.sum(v**4)  # noqa: E731
    with pytest.warns(DeprecationWarning, match="max_steps"):
        old = deepest.Legendre(lagrangian, max_steps=9)
    new = deepest.Legendre(lagrangian, max_newton_steps=9)
    assert old.max_newton_steps == new.max_newton_steps == 9
    x, p = jnp.ones(2), jnp.array([0.3, -0.2])
    np.testing.assert_array_equal(old.velocity(0.0, x, p), new.velocity(0.0, x, p))


def test_config_key_max_steps():
    with pytest.warns(DeprecationWarning, match="anneal.max_steps"):
        old = dx.AnnealSection(max_steps=77)
    assert old.max_evaluations == 77 == dx.AnnealSection(max_evaluations=77).max_evaluations
    assert old.run_options()["max_evaluations"] == 77
    with pytest.raises(ValueError, match="max_evaluations"):
        dx.AnnealSection(max_steps=77, max_evaluations=77)


def test_anneal_result_path_and_t1(annealed):
    problem, result = annealed
    t1 = float(problem.ts[-1]) + 0.2
    with pytest.warns(DeprecationWarning, match="`i`"):
        _same(result.path_unknowns(i=1), result.path_unknowns(path=1))
    # an assimilation defines no model: the old keyword reaches it all the same
    with pytest.warns(DeprecationWarning, match="`i`"), pytest.raises(ValueError, match="model"):
        result.model(i=1)
    with pytest.warns(DeprecationWarning, match="t_end"):
        old = result.predict(t_end=t1, n_times=5)
    _same(old, result.predict(t1=t1, n_times=5))
    u = result.path_unknowns(0)
    with pytest.warns(DeprecationWarning, match="t_end"):
        old = problem.forecast(u, t_end=t1, n_times=5)
    _same(old, problem.forecast(u, t1=t1, n_times=5))


def test_laplace_forecast_t1(annealed):
    problem, result = annealed
    lap = deepest.laplace(problem, result)
    t1 = float(problem.ts[-1]) + 0.2
    with pytest.warns(DeprecationWarning, match="t_end"):
        old = lap.forecast(t_end=t1, n_times=5, n_samples=8)
    _same(old, lap.forecast(t1=t1, n_times=5, n_samples=8))


def test_pamc_samples_are_the_reported_quantities(annealed):
    problem, result = annealed
    mc = deepest.pamc(
        problem,
        SCHEDULE,
        n_chains=2,
        key=jr.key(0),
        n_samples=6,
        n_warmup=4,
        betas=[1],
        init=result,
        kernel="hmc",
        num_integration_steps=2,
        precondition=False,
    )
    u = mc.unknown_samples[1]
    theta = mc.samples[1]["params"]["forcing"]
    assert theta.shape == u["params"]["forcing"].shape and theta.shape[:2] == (2, 6)
    assert np.all((theta > 4.0) & (theta < 12.0))
    flat = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), u)
    expected = jax.vmap(problem.parameters)(flat)["forcing"].reshape(theta.shape)
    np.testing.assert_allclose(theta, expected, rtol=1e-14)
    # a box, not a change of variables: the unknown is θ itself
    np.testing.assert_array_equal(theta, u["params"]["forcing"])
    np.testing.assert_array_equal(mc.samples[1]["paths"], u["path"])
    t1 = float(problem.ts[-1]) + 0.2
    with pytest.warns(DeprecationWarning, match="t_end"):
        old = mc.forecast(t_end=t1, n_times=5)
    _same(old, mc.forecast(t1=t1, n_times=5))
