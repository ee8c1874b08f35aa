"""ContinuousNetwork and PiecewiseConstant: forward accuracy, slices, costate sweep, errors."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg

import deepest
from deepest.integrators import ClassicalRK4, ReversibleRK


def _relative_error(tree, reference):
    pairs = zip(jax.tree.leaves(tree), jax.tree.leaves(reference), strict=True)
    return max(float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) for a, b in pairs)


def _linear(key, dim):
    # A module of x alone (no t): the network must accept it.
    return eqx.nn.Linear(dim, dim, use_bias=False, key=key)


def test_forward_pass_converges_to_matrix_exponential_at_order_four(getkey):
    dim, t1 = 3, 1.0
    field = _linear(getkey(), dim)
    x = jr.normal(getkey(), (dim,))
    exact = scipy.linalg.expm(np.asarray(field.weight) * t1) @ np.asarray(x)
    errors = []
    for n_steps in (8, 16):
        net = deepest.ContinuousNetwork(field, t1, n_steps, solver=ClassicalRK4())
        errors.append(np.linalg.norm(np.asarray(net(x)) - exact))
    order = np.log2(errors[0] / errors[1])
    assert abs(order - 4) <= 0.2


def test_piecewise_constant_switches_parameters_at_equal_slices(getkey):
    dim, t1, n_slices = 3, 1.2, 3
    field = deepest.PiecewiseConstant(lambda k: _linear(k, dim), n_slices, getkey())
    assert field.fields.weight.shape == (n_slices, dim, dim)
    assert not np.allclose(field.slice(0).weight, field.slice(1).weight)
    x = jr.normal(getkey(), (dim,))
    exact = np.asarray(x)
    for k in range(n_slices):
        exact = scipy.linalg.expm(np.asarray(field.slice(k).weight) * t1 / n_slices) @ exact
    net = deepest.ContinuousNetwork(field, t1, 60, solver=ClassicalRK4())
    # RK4 with h = 0.02: global error ~ h⁴ |A|⁵ T / 120, well below 1e-7.
    np.testing.assert_allclose(net(x), exact, rtol=1e-7)
    # A module instead of a factory: every slice starts as a copy.
    tiled = deepest.PiecewiseConstant(_linear(getkey(), dim), n_slices)
    np.testing.assert_array_equal(tiled.slice(0).weight, tiled.slice(2).weight)


@pytest.mark.parametrize("adjoint", ["costate", "reversible"])
def test_costate_sweep_gives_costates_and_gradient(adjoint, getkey):
    dim, t1, n_steps, n_slices = 3, 1.0, 8, 2

    def mlp(key):
        return eqx.nn.MLP(dim, dim, 8, 1, activation=jnp.tanh, key=key)

    field = deepest.PiecewiseConstant(mlp, n_slices, getkey())
    encoder = eqx.nn.Linear(2, dim, key=getkey())
    decoder = eqx.nn.Linear(dim, 2, key=getkey())
    solver = ReversibleRK(ClassicalRK4()) if adjoint == "reversible" else ClassicalRK4()

    def network(adjoint):
        return deepest.ContinuousNetwork(
            field,
            t1,
            n_steps,
            solver=solver,
            adjoint=adjoint,
            encoder=encoder,
            decoder=decoder,
        )

    net = network(adjoint)
    x = jr.normal(getkey(), (2,))

    def loss(y_hat):
        return jnp.sum(jnp.sin(y_hat))

    costates, grad = eqx.filter_jit(lambda n, x: n.costate_sweep(x, jax.grad(loss)(n(x))))(net, x)
    assert costates.shape == (n_steps + 1, dim)
    # The reference: JAX through the same discrete forward pass.
    reference_net = network("autodiff")
    reference = eqx.filter_jit(eqx.filter_grad(lambda n: loss(n(x))))(reference_net)
    # The structure `eqx.filter_grad` gives for this network.
    assert jax.tree.structure(grad) == jax.tree.structure(eqx.filter(net, eqx.is_inexact_array))
    assert _relative_error(grad, reference) <= 1e-12
    # λ(0) = ∂C/∂x(0) is checked through the encoder's gradient, λ(0) ⊗ x. In costate
    # mode λ at the slice boundary t1/2 must be ∂C/∂x(t1/2); the fields are autonomous, so
    # the second slice is a network on [0, t1/2] by itself. (In reversible mode the rows
    # are costates of the pair (y, z), restarted at each slice boundary.)
    x0 = encoder(x)
    if adjoint == "costate":
        halves = [
            deepest.ContinuousNetwork(
                field.slice(k), t1 / 2, n_steps // 2, solver=solver, adjoint="autodiff"
            )
            for k in range(n_slices)
        ]
        costate_half = jax.jit(
            lambda x0: jax.grad(lambda y: loss(decoder(halves[1](y))))(halves[0](x0))
        )(x0)
        assert _relative_error(costates[n_steps // 2], costate_half) <= 1e-12
    np.testing.assert_allclose(
        costates[-1], jax.grad(lambda y: loss(decoder(y)))(net.integrate(x0)), rtol=1e-14
    )


def test_bad_input_gets_clear_errors(getkey):
    field = _linear(getkey(), 3)
    with pytest.raises(ValueError, match="t1"):
        deepest.ContinuousNetwork(field, 0.0, 10)
    with pytest.raises(ValueError, match="t1"):
        deepest.ContinuousNetwork(field, -1.0, 10)
    with pytest.raises(ValueError, match="n_steps"):
        deepest.ContinuousNetwork(field, 1.0, 0)
    with pytest.raises(ValueError, match="multiple"):
        deepest.ContinuousNetwork(deepest.PiecewiseConstant(field, 3), 1.0, 10)
    with pytest.raises(ValueError, match="adjoint"):
        deepest.ContinuousNetwork(field, 1.0, 10, adjoint="backsolve")
    with pytest.raises(ValueError, match="Did you mean 'costate'"):
        deepest.ContinuousNetwork(field, 1.0, 10, adjoint="costates")
    controller = diffrax.PIDController(rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="fixed steps"):
        deepest.ContinuousNetwork(
            field, 1.0, 10, adjoint="reversible", stepsize_controller=controller
        )
    with pytest.raises(ValueError, match="fixed steps"):
        deepest.ContinuousNetwork(
            field, 1.0, 10, adjoint=deepest.ReversibleAdjoint(), stepsize_controller=controller
        )
    with pytest.raises(ValueError, match="error estimate"):
        deepest.ContinuousNetwork(field, 1.0, 10, stepsize_controller=controller)
    with pytest.raises(ValueError, match="max_steps"):
        deepest.ContinuousNetwork(field, 1.0, 10, max_steps=5)
    with pytest.raises(TypeError, match="explicit"):
        deepest.ContinuousNetwork(field, 1.0, 10, solver=diffrax.Kvaerno3())
    with pytest.raises(ValueError, match="key"):
        deepest.PiecewiseConstant(lambda k: _linear(k, 3), 2)
    with pytest.raises(ValueError, match="n_slices"):
        deepest.PiecewiseConstant(field, 0)
    with pytest.raises(ValueError, match="coupling"):
        ReversibleRK(ClassicalRK4(), coupling=0.0)
    with pytest.raises(ValueError, match="coupling rate"):
        ReversibleRK(ClassicalRK4(), coupling_rate=-1.0)
    with pytest.raises(ValueError, match="not both"):
        ReversibleRK(ClassicalRK4(), coupling=0.5, coupling_rate=1.0)
    net = deepest.ContinuousNetwork(field, 1.0, 10)
    with pytest.raises(ValueError, match="vmap"):
        net(jnp.ones((4, 3)))


@pytest.mark.parametrize(
    "name, adjoint",
    [
        ("autodiff", deepest.AutodiffAdjoint()),
        ("costate", deepest.CostateAdjoint()),
        ("reversible", deepest.ReversibleAdjoint()),
    ],
)
def test_adjoint_names_stand_for_the_adjoint_modules(name, adjoint, getkey):
    field = _linear(getkey(), 3)
    by_name = deepest.ContinuousNetwork(field, 1.0, 10, solver=diffrax.Heun(), adjoint=name)
    by_module = deepest.ContinuousNetwork(field, 1.0, 10, solver=diffrax.Heun(), adjoint=adjoint)
    assert isinstance(by_name.adjoint, deepest.AbstractAdjoint)
    assert by_name.adjoint == adjoint
    # The adjoint chooses the scheme that runs forward: the reversible one wraps Heun.
    assert by_name.solver == by_module.solver
    assert isinstance(by_name.solver, ReversibleRK) == (name == "reversible")
    x = jr.normal(getkey(), (3,))
    np.testing.assert_array_equal(by_name(x), by_module(x))
