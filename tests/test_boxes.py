"""Boxes of an assimilation: `bounds=` on parameters and `state_bounds=` on states are box
constraints of the unknowns (`problem.bounds()`), not a change of variables; the starts
are drawn inside them (per-component ranges cut to the boxes); a start given outside is
refused before compute; and the Lorenz-63 case that the sigmoid map trapped at ρ = 15
recovers ρ ≈ 28 within (15, 40)."""

import re

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest


def _lorenz63(n_times=41, **kwargs):
    data = deepest.twin_experiment(deepest.models.Lorenz63(), 3, n_times, 0.05, [0], 0.5, jr.key(3))
    return deepest.Assimilation(
        deepest.models.Lorenz63(rho=20.0),
        data,
        rm=4.0,
        steps_per_obs=2,
        estimate=("rho",),
        **kwargs,
    )


def test_bounds_are_the_unknowns_box():
    problem = _lorenz63(
        bounds={"rho": (15.0, 40.0)},
        state_bounds=[None, (-30.0, 30.0), (0.0, np.inf)],
        discretisation="simpson_hermite",
    )
    lower, upper = problem.bounds()
    assert jax.tree.structure(lower) == jax.tree.structure(problem.init(jr.key(0)))
    assert float(lower["params"]["rho"]) == 15.0 and float(upper["params"]["rho"]) == 40.0
    np.testing.assert_array_equal(lower["path"][7], [-np.inf, -30.0, 0.0])
    np.testing.assert_array_equal(upper["midpoints"][3], [np.inf, 30.0, np.inf])
    # the unknowns are what results report: no map between them
    u = problem.init(jr.key(1))
    assert problem.parameters(u)["rho"] is u["params"]["rho"]
    # an unbounded problem has no box, so its runs compile as before
    assert _lorenz63().bounds() is None


def test_starts_are_drawn_inside_the_boxes():
    problem = _lorenz63(
        bounds={"rho": (15.0, 40.0)},
        state_bounds={1: (-5.0, 5.0), 2: (0.0, 60.0)},
        state_range=[(-20.0, 20.0), (-20.0, 20.0), (10.0, 50.0)],
    )
    # per-component ranges cut to the boxes; the parameter drawn over its box
    assert problem.state_ranges == ((-20.0, 20.0), (-5.0, 5.0), (10.0, 50.0))
    assert problem.param_ranges == (("rho", 15.0, 40.0),)
    u = jax.vmap(problem.init)(jr.split(jr.key(0), 64))
    path = np.asarray(u["path"])
    assert path[..., 1].min() >= -5.0 and path[..., 1].max() <= 5.0
    assert path[..., 2].min() >= 10.0 and path[..., 2].max() <= 50.0
    rho = np.asarray(u["params"]["rho"])
    assert rho.min() >= 15.0 and rho.max() <= 40.0 and rho.max() - rho.min() > 15.0
    # an observed component starts at the data, clipped into its box
    clipped = _lorenz63(state_bounds=[(-1.0, 1.0), None, None]).init(jr.key(0))["path"]
    data = np.asarray(_lorenz63().data.values[:, 0])
    np.testing.assert_array_equal(clipped[::2, 0], np.clip(data, -1.0, 1.0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bounds": {"rho": (40.0, 15.0)}}, "must be (low, high) with low < high"),
        ({"bounds": {"rho": (np.nan, 15.0)}}, "must be (low, high) with low < high"),
        ({"bounds": {"sigma": (1.0, 2.0)}}, "names 'sigma', which is not in `estimate`"),
        ({"state_bounds": [(0.0, 1.0)]}, "one (low, high) or None per component (3)"),
        ({"state_bounds": {3: (0.0, 1.0)}}, "names component 3; the model has 3"),
        ({"state_bounds": [None, (2.0, 1.0), None]}, "`state_bounds[1]` must be (low, high)"),
        ({"state_range": [(0.0, 1.0)] * 2}, "or one per component (3)"),
        (
            {"state_range": [(0.0, 1.0)] * 3, "state_bounds": [None, (5.0, 6.0), None]},
            "`state_range` of component 1 (0.0, 1.0) lies outside its `state_bounds`",
        ),
        (
            {"bounds": {"rho": (15.0, 40.0)}, "param_ranges": {"rho": (50.0, 60.0)}},
            "the starting range of 'rho' (50.0, 60.0) lies outside its `bounds`",
        ),
    ],
)
def test_bad_boxes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _lorenz63(**kwargs)


def test_a_start_outside_the_box_is_refused_before_compute():
    problem = _lorenz63(bounds={"rho": (15.0, 40.0)})
    init = jax.vmap(problem.init)(jr.split(jr.key(0), 2))
    init["params"]["rho"] = jnp.array([20.0, 41.5])
    schedule = deepest.AnnealSchedule(rf0=1e-2, alpha=2.0, n_beta=2)
    with pytest.raises(ValueError, match=r"`init\['params'\]\['rho'\]` lies outside .* path 1"):
        deepest.anneal(problem, schedule, 2, jr.key(0), init=init, progress=False)


@pytest.mark.parametrize("minimiser", [deepest.LBFGS(), deepest.LevenbergMarquardt()])
def test_lorenz63_rho_leaves_its_bound(minimiser):
    # The sigmoid map of earlier versions ended every path at ρ = 15.000 here: at the first
    # β the minimiser pushed ρ to an edge, where the map's gradient vanishes.
    state_range = [(-20.0, 20.0), (-25.0, 25.0), (5.0, 45.0)]
    bounded = _lorenz63(n_times=81, bounds={"rho": (15.0, 40.0)}, state_range=state_range)
    free = _lorenz63(n_times=81, state_range=state_range)
    schedule = deepest.AnnealSchedule(rf0=1e-3, alpha=2.0, n_beta=20)
    init = jax.vmap(bounded.init)(jr.split(jr.key(0), 6))
    init["params"]["rho"] = jnp.linspace(15.0, 40.0, 6)  # on both bounds and between
    runs = [
        deepest.anneal(p, schedule, 6, jr.key(0), init=init, minimiser=minimiser, progress=False)
        for p in (bounded, free)
    ]
    rho = [np.asarray(r.params["rho"]) for r in runs]
    assert np.all(np.abs(rho[0] - 28.0) < 0.5)
    # the minimum lies inside the box: the bounded run finds the free run's minimum
    np.testing.assert_allclose(rho[0], rho[1], rtol=1e-6)
    assert not runs[0].params_at_bound["rho"].any() and runs[0].warnings() == []
