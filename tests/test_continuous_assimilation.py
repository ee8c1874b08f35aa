"""The continuous action: envelope gradient, discrete limit, R_f → ∞ limit, training."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import deepest


class TanhField(eqx.Module):
    """F(t, x) = tanh(W x + b), a continuous layer."""

    w: jax.Array
    b: jax.Array

    def __call__(self, t, x):
        return jnp.tanh(self.w @ x + self.b)


def _field(key, dim=2, scale=1.0):
    kw, kb = jr.split(key)
    return TanhField(scale * jr.normal(kw, (dim, dim)) / jnp.sqrt(dim), 0.5 * jr.normal(kb, (dim,)))


def _network_problem(field, rf, fixed_start=False, rm=10.0):
    data = deepest.Observations([0.0, 1.0], [[1.0, -0.5], [0.2, 0.8]], [0, 1])
    return deepest.ContinuousAssimilation(field, data, rm, rf, fixed_start=fixed_start)


FINE = deepest.MultipleShooting(4, steps_per_segment=32)


def test_envelope_gradient_matches_finite_differences(getkey):
    problem = _network_problem(_field(getkey()), rf=5.0)

    def with_w(w):
        return eqx.tree_at(lambda q: q.field.model.w, problem, w)

    def action_and_envelope(w):
        p = with_w(w)
        sol = deepest.solve_tpbvp(p, FINE)
        return p.action(sol), p.weight_gradient(sol).w

    w0 = problem.field.model.w
    h = 1e-5
    basis = jnp.eye(4).reshape(4, 2, 2)
    # One compiled, vmapped solve gives the envelope gradient at w0 and the actions at w0 ± h.
    values, envelopes = jax.jit(jax.vmap(action_and_envelope))(
        jnp.concatenate([w0[None], w0[None] + h * basis, w0[None] - h * basis])
    )
    envelope = envelopes[0]
    fd = ((values[1:5] - values[5:]) / (2 * h)).reshape(2, 2)
    # Central differences: O(h²) ≈ 1e-10 truncation, ≈ 1e-15/h = 1e-10 rounding; the
    # quadrature error of A is smooth in W and shifts both alike (≲ 1e-9 at 128 steps).
    assert jnp.allclose(envelope, fd, rtol=1e-6, atol=1e-8), (envelope, fd)
    assert float(jnp.max(jnp.abs(envelope))) > 1e-2  # the test is not vacuous


def test_envelope_gradient_of_a_callable_model_is_shaped_like_its_params(getkey):
    # The same field as a module and as F(t, x, params): the gradient comes back shaped
    # like what the user passed (the module, or the params dict), with equal values.
    field = _field(getkey())
    as_module = _network_problem(field, rf=5.0)
    data = deepest.Observations([0.0, 1.0], [[1.0, -0.5], [0.2, 0.8]], [0, 1])
    as_callable = deepest.ContinuousAssimilation(
        lambda t, x, q: jnp.tanh(q["w"] @ x + q["b"]),
        data,
        10.0,
        5.0,
        params={"w": field.w, "b": field.b},
    )
    by_module = as_module.weight_gradient(deepest.solve_tpbvp(as_module, FINE))
    by_callable = as_callable.weight_gradient(deepest.solve_tpbvp(as_callable, FINE))
    assert isinstance(by_module, TanhField) and set(by_callable) == {"w", "b"}
    assert jnp.allclose(by_callable["w"], by_module.w, rtol=1e-10, atol=1e-12)
    assert jnp.allclose(by_callable["b"], by_module.b, rtol=1e-10, atol=1e-12)
    assert float(jnp.max(jnp.abs(by_module.w))) > 1e-3


def test_discrete_action_minimiser_converges_at_the_discretisation_order():
    # A network-like problem: all components measured at the two ends only. Reference: the
    # continuous TPBVP. The discrete problems are the foundation's (deepest.Assimilation with
    # L = steps_per_obs layers between the ends, each the residual-network layer map
    # x + h·F, i.e. forward Euler; weights scaled by deepest.discrete_weights), minimised by
    # the foundation annealer at the scaled R_f (one β: the scaled action is already the one
    # whose minimiser approximates the continuous path).
    dim, t_span = 2, 1.0
    times = np.array([0.0, t_span])
    values = np.array([[1.0, -0.5], [0.2, 0.8]])
    field = TanhField(jnp.array([[0.3, -1.2], [0.9, 0.1]]), jnp.array([0.2, -0.1]))
    rf, rm = 2.0, 10.0
    data = deepest.Observations(times, values, [0, 1])
    continuous = deepest.ContinuousAssimilation(field, data, rm, rf)
    reference = eqx.filter_jit(deepest.solve_tpbvp)(continuous, FINE)

    errors, hs = [], []
    for n_layers in (8, 16, 32):
        rf_d, rm_d = deepest.discrete_weights(
            rf, rm, dim=dim, t1=t_span, n_steps=n_layers, n_measured=values.size
        )
        problem = deepest.Assimilation(
            field, data, rm_d, dim=dim, discretisation="euler", steps_per_obs=n_layers
        )
        schedule = deepest.AnnealSchedule(float(rf_d), alpha=2.0, n_beta=1)
        # The default tolerances (relative decrease 1e-10, gradient 1e-9 of its start) are
        # far below the discretisation error (≥ 1e-3 here), so that the L-BFGS minimiser
        # stands for the exact discrete one.
        result = deepest.anneal(problem, schedule, 1, jr.key(0), progress=False)
        assert bool(result.converged[-1, 0]), result.stop_reasons()
        exact = jax.vmap(lambda t: reference.evaluate(t)[0])(problem.ts)
        errors.append(float(np.max(np.abs(result.paths[0] - exact))))
        hs.append(t_span / n_layers)
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    # Forward Euler is order 1 (measured slope 1.02; errors 1.5e-2 … 3.6e-3); the reference
    # is ≲ 1e-9 accurate, far below these errors.
    assert abs(slope - 1) < 0.2, (errors, slope)


@pytest.mark.parametrize("fixed_start", [False, True], ids=["estimated-x0", "hard-input"])
def test_large_rf_limit_is_forward_and_costate_sweep(fixed_start, getkey):
    field = _field(getkey())
    rm = 10.0
    problem = _network_problem(field, rf=1e8, fixed_start=fixed_start, rm=rm)
    sol = eqx.filter_jit(deepest.solve_tpbvp)(problem, FINE)
    x0 = sol.xs[0]
    if fixed_start:
        assert jnp.allclose(x0, problem.values[0], atol=1e-12)
    # Forward sweep of x from x(0) and the backprop costate of the continuous network.
    n_steps = 128
    net = deepest.ContinuousNetwork(field, t1=1.0, n_steps=n_steps)
    target = problem.values[-1]
    x_final = net(x0)
    costates, _ = net.costate_sweep(x0, rm * (x_final - target))
    ts = jnp.linspace(0.0, 1.0, n_steps + 1)
    x, p = jax.vmap(sol.evaluate)(ts)
    # Differences: O(1/R_f) = 1e-8 from the limit, O(h⁴) ≈ 1e-9 from RK4 at h = 1/128.
    assert jnp.allclose(x[-1], x_final, atol=1e-7)
    assert jnp.allclose(p, -costates, atol=1e-6)
    # p(0) of the estimated start is the measurement force: p(0) = R_m(x(0) − y(0)) = −λ(0).
    if not fixed_start:
        assert jnp.allclose(-costates[0], rm * (x0 - problem.values[0]), atol=1e-6)


def test_training_continuous_network_reduces_the_action(getkey):
    teacher = _field(getkey(), scale=2.0)
    inputs = jr.normal(getkey(), (8, 2))
    net = deepest.ContinuousNetwork(teacher, t1=1.0, n_steps=32)
    targets = jax.vmap(net)(inputs)
    student = _field(getkey())
    method = deepest.MultipleShooting(2, steps_per_segment=8)
    trained, history = deepest.train_continuous(
        student,
        inputs,
        targets,
        t1=1.0,
        rm=100.0,
        rf=10.0,
        optimiser=optax.adam(0.05),
        steps=30,
        method=method,
    )
    losses = history.train_loss
    assert losses.shape == (30,)
    assert bool(jnp.all(jnp.isfinite(losses)))
    assert losses[-1] < 0.3 * losses[0], losses
    # The trained layer maps inputs nearer the targets than the initial one.
    before = jax.vmap(deepest.ContinuousNetwork(student, t1=1.0, n_steps=32))(inputs)
    after = jax.vmap(deepest.ContinuousNetwork(trained, t1=1.0, n_steps=32))(inputs)
    assert jnp.mean((after - targets) ** 2) < 0.5 * jnp.mean((before - targets) ** 2)


def test_discrete_weights_and_residual_network(getkey):
    rf_d, rm_d = deepest.discrete_weights(2.0, 10.0, dim=3, t1=2.0, n_steps=20, n_measured=6)
    h = 0.1
    assert jnp.allclose(rf_d, 2.0 * 3 * 2.0 / (2 * h**2))
    assert jnp.allclose(rm_d, 10.0 * 6 / 2)
    field = _field(getkey())
    layered = deepest.residual_network(field, t1=1.0, n_steps=256)
    continuous = deepest.ContinuousNetwork(field, t1=1.0, n_steps=256)
    x = jnp.array([0.3, -0.7])
    # Forward Euler (the residual map) vs RK4 at h = 1/256: first-order gap ≈ h.
    gap = float(jnp.max(jnp.abs(layered(x) - continuous(x))))
    assert 1e-5 < gap < 1e-2
