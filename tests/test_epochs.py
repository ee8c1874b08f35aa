"""`deepest.Epochs`: several recordings of one system sharing its parameters. Its action is
one action over every epoch's residuals, so A₀ is the sum of the epochs' own; its banded
layout strings the epochs together in time with no model residual between them; an
anneal over two Lorenz-63 recordings recovers their shared ρ."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest


def _epoch(seed, n_times=41, discretisation="trapezoid", **kwargs):
    data = deepest.twin_experiment(
        deepest.models.Lorenz63(), 3, n_times, 0.05, [0, 1], 0.5, jr.key(seed)
    )
    options = {"estimate": ("rho",), "param_ranges": {"rho": (20.0, 36.0)}, **kwargs}
    return deepest.Assimilation(
        deepest.models.Lorenz63(rho=25.0),
        data,
        rm=4.0,
        discretisation=discretisation,
        **options,
    )


@pytest.mark.parametrize("discretisation", ["trapezoid", "simpson_hermite"])
def test_action_is_the_sum_of_the_epochs(discretisation):
    epochs = [_epoch(s, discretisation=discretisation) for s in (1, 2, 3)]
    problem = deepest.Epochs(epochs)
    u = problem.init(jr.key(0))
    own = [{k: (v if k == "params" else v[e]) for k, v in u.items()} for e in range(len(epochs))]
    for rf in (1e-3, 7.0):
        total = sum(float(p.unnormalised_action(o, rf)) for p, o in zip(epochs, own))
        assert float(problem.unnormalised_action(u, rf)) == pytest.approx(total, rel=1e-13)
    # measurement and model terms averaged over all epochs' entries (equal counts: the mean)
    mean = np.mean([float(p.measurement_error(o)) for p, o in zip(epochs, own)])
    assert float(problem.measurement_error(u)) == pytest.approx(mean, rel=1e-13)
    # the banded residuals carry the same action; the layout round-trips
    states, params = problem.to_banded(u)
    n, d, p = problem.banded_shape
    assert states.shape == (n, d) and params.shape == (p,) and n == 3 * epochs[0].n_model
    node, interval = problem.banded_residuals(states, params, 7.0)
    assert float(jnp.sum(node**2) + jnp.sum(interval**2)) == pytest.approx(
        float(problem.action(u, 7.0)), rel=1e-13
    )
    back = problem.from_banded(states, params)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), u, back))
    # no residual joins one epoch's end to the next one's start
    joint = epochs[0].n_model - 1
    moved = states.at[joint + 1].add(1.0)  # the second epoch's first state
    _, shifted = problem.banded_residuals(moved, params, 7.0)
    assert jnp.array_equal(shifted[joint], interval[joint])
    assert jnp.all(interval[joint] == 0)


def test_anneal_recovers_the_shared_parameter():
    first, second = _epoch(1, steps_per_obs=2), _epoch(2, steps_per_obs=2)
    schedule = deepest.AnnealSchedule(rf0=1e-2, alpha=2.0, n_beta=16)

    def fit(problem):
        minimiser = deepest.LevenbergMarquardt()
        return deepest.anneal(problem, schedule, 4, jr.key(0), minimiser=minimiser, progress=False)

    alone = [fit(p) for p in (first, second)]
    both, one = fit(deepest.Epochs([first, second])), fit(deepest.Epochs([first]))
    rho = [float(r.params["rho"][r.best]) for r in (*alone, both)]
    assert abs(rho[2] - 28.0) < 0.3
    # the joint estimate lies between the recordings' own
    assert min(rho[:2]) < rho[2] < max(rho[:2])
    # one epoch is the problem itself
    assert one.action[-1, one.best] == pytest.approx(alone[0].action[-1, alone[0].best], rel=1e-10)
    assert both.paths.shape == (4, 2, 81, 3)
    # consistent with both recordings: measurement error near R_m·σ² = 1
    assert 0.6 < both.measurement_error[-1, both.best] < 1.4
    # the forecast continues the last epoch
    times, states = both.predict(2.5, n_times=11)
    assert states.shape == (11, 3) and float(times[0]) == pytest.approx(2.0)


def test_epochs_must_be_alike():
    with pytest.raises(ValueError, match="number of\\s+observation times"):
        deepest.Epochs([_epoch(1), _epoch(2, n_times=31)])
    with pytest.raises(ValueError, match="differs from epoch 0 in `estimate`"):
        deepest.Epochs([_epoch(1), _epoch(2, estimate=("rho", "sigma"))])
    with pytest.raises(ValueError, match="another discretisation"):
        deepest.Epochs([_epoch(1), _epoch(2, discretisation="euler")])
    with pytest.raises(TypeError, match="non-empty sequence of deepest.Assimilation"):
        deepest.Epochs([])


def test_laplace_and_its_forecast_band_on_epochs():
    problem = deepest.Epochs([_epoch(1), _epoch(2)])
    schedule = deepest.AnnealSchedule(rf0=1e-2, alpha=2.0, n_beta=10)
    result = deepest.anneal(
        problem, schedule, 2, jr.key(0), minimiser=deepest.LevenbergMarquardt(), progress=False
    )
    lap = deepest.laplace(problem, result)
    assert lap.paths_std.shape == (2, 2, 41, 3) and lap.positive_definite.all()
    times, mean, std = lap.forecast(2.5, n_times=6, n_samples=8)
    assert np.shape(mean) == (6, 3) and np.all(np.isfinite(std))


def test_a_problem_digest_sees_the_box():
    from deepest._annealing import problem_digest

    digests = {
        problem_digest(p)
        for p in (
            _epoch(1),
            _epoch(1, bounds={"rho": (20.0, 36.0)}),
            _epoch(1, bounds={"rho": (27.0, 29.0)}),
            _epoch(1, bounds={"rho": (20.0, 36.0)}, state_bounds=[(-30.0, 30.0), None, None]),
        )
    }
    assert len(digests) == 4
    assert problem_digest(_epoch(1)) == problem_digest(_epoch(1))
    background = deepest.Background(jnp.zeros(4), diag=jnp.ones(4))
    with pytest.raises(ValueError, match="would enter once per epoch"):
        deepest.Epochs([_epoch(1, background=background), _epoch(2, background=background)])
