"""Problems built under a trace: a traced model parameter, R_m or data values, inside
`jax.grad`, `jax.jit` and `jax.vmap`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest

DIM, OBSERVED, RF = 6, (0, 2, 3), 2.5


@pytest.fixture(scope="module")
def data():
    return deepest.twin_experiment(
        deepest.models.Lorenz96(8.0), DIM, 8, 0.05, OBSERVED, 0.2, jr.key(0)
    )


@pytest.fixture(scope="module")
def path(data):
    problem = deepest.Assimilation(deepest.models.Lorenz96(8.0), data, 10.0, discretisation="rk4")
    u = problem.init(jr.key(1))
    return jax.tree.map(lambda a: a + 0.2 * jr.normal(jr.key(2), a.shape, a.dtype), u)


def _central(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.mark.parametrize("transform", ["grad", "jit-grad"])
def test_forcing_gradient_through_construction(data, path, transform):
    def action(forcing):
        model = deepest.models.Lorenz96(forcing)
        problem = deepest.Assimilation(model, data, 10.0, discretisation="rk4")
        return problem.action(path, RF)

    grad = jax.grad(action) if transform == "grad" else jax.jit(jax.grad(action))
    g = float(grad(8.0))
    # RK4's residual is a polynomial of degree 4 in F: central differences are exact to O(h²)
    fd = float(_central(action, 8.0, 1e-4))
    assert g == pytest.approx(fd, rel=1e-7)
    assert abs(g) > 1e-3


def test_rm_gradient_through_construction(data, path):
    rm0 = jnp.array([10.0, 20.0, 5.0])

    def action(rm):
        problem = deepest.Assimilation(deepest.models.Lorenz96(8.0), data, rm)
        return problem.action(path, RF)

    g = np.asarray(jax.jit(jax.grad(action))(rm0))
    fd = np.array([_central(lambda s, i=i: action(rm0.at[i].add(s)), 0.0, 1e-3) for i in range(3)])
    # the action is linear in R_m
    np.testing.assert_allclose(g, fd, rtol=1e-9)
    assert np.all(g > 0)


def test_vmap_over_data_sets_builds_a_batch(data, path):
    keys = jr.split(jr.key(3), 4)
    batch = jnp.stack([data.values + 0.1 * jr.normal(k, data.values.shape) for k in keys])

    def build(values):
        observations = deepest.Observations(data.times, values, OBSERVED, truth=data.truth)
        return deepest.Assimilation(
            deepest.models.Lorenz96(8.0),
            observations,
            10.0,
            estimate=("forcing",),
            param_ranges={"forcing": (6.0, 10.0)},
        )

    problems = eqx.filter_vmap(build)(batch)
    u = {**path, "params": {"forcing": jnp.asarray(7.5)}}
    actions = eqx.filter_vmap(lambda p: p.action(u, RF))(problems)
    one_by_one = [float(build(v).action(u, RF)) for v in batch]
    np.testing.assert_allclose(np.asarray(actions), one_by_one, rtol=1e-13)
    assert np.ptp(one_by_one) > 0  # the data sets differ


def test_traced_construction_keeps_checks_that_need_no_values(data):
    def bad_shape(rm):
        deepest.Assimilation(deepest.models.Lorenz96(8.0), data, rm)
        return rm

    with pytest.raises(ValueError, match="one value per observed component"):
        jax.jit(bad_shape)(jnp.ones(2))

    def unranged(forcing):
        deepest.Assimilation(deepest.models.Lorenz96(forcing), data, 1.0, estimate=("forcing",))
        return forcing

    with pytest.raises(ValueError, match="param_ranges"):
        jax.jit(unranged)(8.0)


def test_continuous_assimilation_under_a_trace():
    w0 = jnp.array([[0.3, -1.0], [0.8, 0.2]])

    def field(t, x, params):
        return jnp.tanh(params["w"] @ x)

    data = deepest.Observations([0.0, 0.5, 1.0], [[1.0, -0.5], [0.3, 0.1], [0.2, 0.8]], [0, 1])
    x, p = jnp.array([0.4, -0.2]), jnp.array([0.7, 0.3])

    def hamiltonian(w, rm, rf, values):
        observations = deepest.Observations(data.times, values, (0, 1))
        problem = deepest.ContinuousAssimilation(field, observations, rm, rf, params={"w": w})
        return problem.hamiltonian(0.0, x, p) + jnp.sum(problem.boundary_residual((x, p), (x, p)))

    args = (w0, jnp.array([10.0, 4.0]), 5.0, data.values)
    grads = jax.jit(jax.grad(hamiltonian, argnums=(0, 1, 2, 3)))(*args)
    for i, g in enumerate(grads):
        a = np.asarray(args[i], float)
        fd = np.zeros_like(a)
        for j in np.ndindex(a.shape or ()):
            e = np.zeros_like(a)
            e[j] = 1e-5
            plus = list(args)
            minus = list(args)
            plus[i], minus[i] = a + e, a - e
            fd[j] = (hamiltonian(*plus) - hamiltonian(*minus)) / 2e-5
        np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-7, atol=1e-9)
    batch = jnp.stack([data.values, data.values + 1.0])
    out = jax.vmap(lambda v: hamiltonian(w0, 10.0, 5.0, v))(batch)
    np.testing.assert_allclose(
        np.asarray(out), [float(hamiltonian(w0, 10.0, 5.0, v)) for v in batch], rtol=1e-13
    )


@pytest.mark.parametrize("kind", ["layered", "recurrent"])
def test_trainings_under_a_trace(kind):
    m = 5
    if kind == "layered":
        net = deepest.LayeredNetwork([3, 4, 2], jnp.tanh, key=jr.key(0))
        shape_in, shape_out = (m, 3), (m, 2)
    else:
        net = deepest.RecurrentNetwork(2, 3, 2, key=jr.key(0))
        shape_in, shape_out = (m, 4, 2), (m, 4, 2)
    inputs = jr.normal(jr.key(1), shape_in)
    targets = jr.normal(jr.key(2), shape_out)
    u = deepest.training(net, inputs, targets, 1.0).init(jr.key(3))
    u = jax.tree.map(lambda a: a + 0.1, u)

    def action(rm, x, y):
        return deepest.training(net, x, y, rm).action(u, RF)

    g = jax.jit(jax.grad(action, argnums=(0, 2)))(2.0, inputs, targets)
    fd_rm = (action(2.0 + 1e-3, inputs, targets) - action(2.0 - 1e-3, inputs, targets)) / 2e-3
    assert float(g[0]) == pytest.approx(float(fd_rm), rel=1e-9)
    e = jnp.zeros(shape_out).at[(1,) * len(shape_out)].set(1e-4)
    fd_y = (action(2.0, inputs, targets + e) - action(2.0, inputs, targets - e)) / 2e-4
    assert float(g[1][(1,) * len(shape_out)]) == pytest.approx(float(fd_y), rel=1e-7)
    xs = jnp.stack([inputs, inputs + 0.5])
    ys = jnp.stack([targets, -targets])
    batch = jax.vmap(lambda x, y: action(2.0, x, y))(xs, ys)
    np.testing.assert_allclose(
        np.asarray(batch), [float(action(2.0, x, y)) for x, y in zip(xs, ys)], rtol=1e-13
    )
