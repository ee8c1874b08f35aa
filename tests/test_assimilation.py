import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest

import deepest
from deepest.discretisations import DISCRETISATIONS as SCHEMES

from .helpers import small_problem


def _linear_problem(discretisation):
    # F(t, x, p) = a x with a = -1: a case small enough to work out by hand.
    data = deepest.Observations([0.0, 0.5, 1.0], [[1.0], [0.5], [0.2]], observed=[0])
    return deepest.Assimilation(
        lambda t, x, p: p["a"] * x,
        data,
        rm=2.0,
        dim=2,
        discretisation=discretisation,
        params={"a": -1.0},
        estimate=("a",),
    )


PATH = jnp.array([[1.2, 0.0], [0.4, 1.0], [0.3, -0.5]])


@pytest.mark.parametrize(
    "discretisation, model_error",
    [
        # Euler: r = x1 - (1 + h a) x0 = x1 - 0.5 x0 -> [-0.2, 1.0], [0.1, -1.0]; sum 2.05 / 4.
        ("euler", 2.05 / 4),
        # trapezoid: r = 1.25 x1 - 0.75 x0 -> [-0.4, 1.25], [0.075, -1.375]; sum 3.61875 / 4.
        ("trapezoid", 3.61875 / 4),
    ],
)
def test_action_hand_computed(discretisation, model_error):
    problem = _linear_problem(discretisation)
    u = {"path": PATH, "params": {"a": jnp.array(-1.0)}}
    # 2/(1*3) * (0.2^2 + 0.1^2 + 0.1^2) = 0.04
    assert float(problem.measurement_error(u)) == pytest.approx(0.04, rel=1e-14)
    assert float(problem.model_error(u)) == pytest.approx(model_error, rel=1e-14)
    assert float(problem.action(u, 10.0)) == pytest.approx(0.04 + 10 * model_error, rel=1e-14)


def test_action_per_component_weights():
    problem = _linear_problem("euler")
    u = {"path": PATH, "params": {"a": jnp.array(-1.0)}}
    # Per-component R_f weighs the squared residuals of each component: [0.05, 2.0] / 4.
    rf = jnp.array([3.0, 0.5])
    expected = 0.04 + (3.0 * 0.05 + 0.5 * 2.0) / 4
    assert float(problem.action(u, rf)) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("discretisation", [d.name for d in SCHEMES])
def test_gradient_finite_differences(discretisation, getkey):
    mask = np.ones((11, 3), bool)
    mask[3, 1] = mask[7, 0] = False
    base = small_problem(discretisation, steps_per_obs=2, n_times=11, dim=6)
    data = deepest.Observations(
        base.data.times, base.data.values, base.data.observed, truth=base.data.truth, mask=mask
    )
    problem = deepest.Assimilation(
        deepest.models.Lorenz96(8.0),
        data,
        rm=jnp.array([4.0, 6.0, 8.0]),
        discretisation=discretisation,
        steps_per_obs=2,
        estimate=("forcing",),
        bounds={"forcing": (5.0, 11.0)},
    )
    u = problem.init(getkey())
    v = jax.tree.map(lambda a: jr.normal(getkey(), a.shape, a.dtype), u)
    rf = jnp.linspace(0.5, 2.0, 6)
    action = lambda u: problem.action(u, rf)
    directional = sum(jax.tree.leaves(jax.tree.map(jnp.vdot, jax.grad(action)(u), v)))
    eps = 1e-5
    shift = lambda s: jax.tree.map(lambda a, b: a + s * eps * b, u, v)
    fd = (action(shift(1)) - action(shift(-1))) / (2 * eps)
    # central differences: truncation O(eps^2 f''') ~ 1e-10, rounding O(1e-16 f / eps).
    assert float(directional) == pytest.approx(float(fd), rel=1e-7)


def _own_trajectory(discretisation, field, x0, h, n):
    """A trajectory of the scheme itself, with implicit steps solved by Newton."""
    newton = optx.Newton(rtol=1e-14, atol=1e-14)

    def rk4(x):
        k1 = field(x)
        k2 = field(x + h / 2 * k1)
        k3 = field(x + h / 2 * k2)
        k4 = field(x + h * k3)
        return x + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6

    def step(x, _):
        if discretisation == "euler":
            return x + h * field(x), x
        if discretisation == "rk4":
            return rk4(x), x
        if discretisation == "trapezoid":
            res = lambda y, _: y - x - h / 2 * (field(x) + field(y))
            return optx.root_find(res, newton, x + h * field(x)).value, x
        if discretisation == "gauss_legendre":
            # the 2-stage Gauss–Legendre Runge–Kutta step; the midpoint is its collocation
            # polynomial at h/2, x + h Σ_j (∫_0^½ ℓ_j) K_j with ℓ_j Lagrange on the stages
            r = 3**0.5
            a = jnp.array([[1 / 4, 1 / 4 - r / 6], [1 / 4 + r / 6, 1 / 4]])
            stage = lambda k, _: k - jax.vmap(field)(x[None] + h * a @ k)
            k = optx.root_find(stage, newton, jnp.stack([field(x), field(x)])).value
            mid = x + h * ((1 / 4 + r / 8) * k[0] + (1 / 4 - r / 8) * k[1])
            return x + h / 2 * (k[0] + k[1]), (x, mid)

        def res(z, _):
            y, m = z
            return (
                y - x - h / 6 * (field(x) + 4 * field(m) + field(y)),
                m - (x + y) / 2 - h / 8 * (field(x) - field(y)),
            )

        y, m = optx.root_find(res, newton, (rk4(x), x + h / 2 * field(x))).value
        return y, (x, m)

    last, xs = jax.lax.scan(step, x0, None, length=n - 1)
    if discretisation in ("simpson_hermite", "gauss_legendre"):
        nodes, mids = xs
        return jnp.concatenate([nodes, last[None]]), mids
    return jnp.concatenate([xs, last[None]]), None


@pytest.mark.parametrize("discretisation", [d.name for d in SCHEMES])
def test_model_error_vanishes_on_own_trajectory(discretisation):
    problem = small_problem(discretisation, steps_per_obs=2, n_times=11, dim=6)
    h = float(problem.ts[1] - problem.ts[0])
    model = deepest.models.Lorenz96(8.17)
    field = lambda x: model(0.0, x)
    path, mids = _own_trajectory(discretisation, field, problem.data.truth[0], h, problem.n_model)
    u = {"path": path, "params": {"forcing": jnp.array(8.17)}}
    if mids is not None:
        u["midpoints"] = mids
    # residuals are rounding-level (~1e-15 each), so their mean square is ~1e-30.
    assert problem.model_error(u) < 1e-26
    # ...while a trajectory of another scheme does not satisfy this one.
    other = "rk4" if discretisation == "euler" else "euler"
    wrong, _ = _own_trajectory(other, field, problem.data.truth[0], h, problem.n_model)
    u["path"] = wrong
    assert problem.model_error(u) > 1e-12


def test_steps_per_obs_grid():
    problem = small_problem(steps_per_obs=3, n_times=5)
    assert problem.n_model == 13
    np.testing.assert_allclose(problem.ts[::3], problem.data.times, rtol=0, atol=1e-15)
    u = problem.init(jr.key(0))
    assert u["path"].shape == (13, 8)
    # observed components start at the data at observation times
    obs = np.asarray(problem.data.observed)
    np.testing.assert_allclose(u["path"][::3][:, obs], problem.data.values, atol=1e-15)


@functools.cache
def _shared_data():
    return deepest.twin_experiment(
        deepest.models.Lorenz96(8.0), 8, 11, 0.05, [0, 2, 4, 6], 0.4, jr.key(0)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rm": 0.0}, "rm"),
        ({"rm": -1.0}, "rm"),
        ({"rm": [1.0, 2.0]}, "rm"),
        ({"estimate": ("forcin",)}, "Did you mean 'forcing'"),
        ({"estimate": ("forcing", "forcing")}, "twice"),
        ({"discretisation": "leapfrog"}, "discretisation"),
        ({"discretisation": "trapezoidal"}, "Did you mean 'trapezoid'"),
        ({"steps_per_obs": 0}, "steps_per_obs"),
        ({"dim": 3}, "out of range|at least 4"),
    ],
)
def test_bad_problem_input(kwargs, match):
    data = deepest.twin_experiment(
        deepest.models.Lorenz96(8.0), 8, 11, 0.05, [0, 2, 4, 6], 0.4, jr.key(0)
    )
    args = {"rm": 1.0, "dim": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        deepest.Assimilation(deepest.models.Lorenz96(8.0), data, **args)


def test_uneven_times_rejected():
    data = deepest.Observations([0.0, 0.1, 0.3], np.zeros((3, 1)), [0])
    with pytest.raises(ValueError, match="equally spaced"):
        deepest.Assimilation(deepest.models.Lorenz96(), data, rm=1.0, dim=5)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda d: d.name)
def test_discretisation_module_or_its_name(scheme, getkey):
    # A Module and its name build the same problem: the same action at the same unknowns.
    by_name = small_problem(scheme.name, n_times=7, dim=6)
    by_module = small_problem(scheme, n_times=7, dim=6)
    assert by_module.discretisation == scheme
    u = by_name.init(getkey())
    assert float(by_module.action(u, 3.0)) == float(by_name.action(u, 3.0))


# -- your own model ----------------------------------------------------------------------


def _rotation(t, x):
    # A damped rotation in the (0, 1) plane with a slow third component: not Lorenz.
    return jnp.stack([-0.1 * x[0] - x[1], x[0] - 0.1 * x[1], -0.5 * x[2]])


def test_plain_callable_model_equals_its_module_form(getkey):
    class Rotation(deepest.models.AbstractModel):
        def __call__(self, t, x):
            return _rotation(t, x)

    data = deepest.twin_experiment(_rotation, 3, 11, 0.1, [0], 0.1, jr.key(0))
    assert data.truth.shape == (11, 3)
    as_function = deepest.Assimilation(_rotation, data, rm=100.0)
    as_module = deepest.Assimilation(Rotation(), data, rm=100.0)
    u = as_module.init(getkey())
    assert float(as_function.action(u, 3.0)) == float(as_module.action(u, 3.0))
    assert as_function.views(jax.tree.map(lambda a: a[None], u))["params"] == {}


@pytest.mark.parametrize(
    "model, message",
    [
        (lambda t, x: x[:2], r"shape \(3,\).*it returned shape \(2,\)"),
        (lambda t, x: jnp.zeros((3, 3)), r"it returned shape \(3, 3\)"),
        (lambda t, x: x > 0, "dtype bool"),
        (lambda t, x: x @ jnp.ones((4, 4)), "failed when called as F"),
    ],
)
def test_a_wrong_model_fails_at_construction(model, message):
    data = deepest.Observations([0.0, 0.1, 0.2], [[1.0], [0.5], [0.2]], observed=[0])
    with pytest.raises(ValueError, match=message):
        deepest.Assimilation(model, data, rm=1.0, dim=3)
    with pytest.raises(ValueError, match=message):
        deepest.ContinuousAssimilation(model, data, 1.0, 1.0, dim=3)


def test_a_model_that_is_nan_at_the_start_is_reported_before_annealing():
    data = deepest.Observations([0.0, 0.1, 0.2], [[1.0], [0.5], [0.2]], observed=[0])
    # Finite only for |x| < 1, and the unobserved components start in (−10, 10).
    problem = deepest.Assimilation(lambda t, x: jnp.sqrt(1 - x**2), data, rm=1.0, dim=2)
    schedule = deepest.AnnealSchedule(1.0, 2.0, 3)
    with pytest.raises(ValueError, match="not finite at any initial path"):
        deepest.anneal(problem, schedule, 4, jr.key(0), progress=False)
    # One path in range: the others are named in a warning, and flagged.
    init = jax.vmap(problem.init)(jr.split(jr.key(0), 4))
    init["path"] = init["path"].at[0].set(0.5)
    with pytest.warns(UserWarning, match=r"initial paths \[1, 2, 3\]"):
        result = deepest.anneal(problem, schedule, 4, init=init, progress=False)
    np.testing.assert_array_equal(result.finite, [True, False, False, False])
