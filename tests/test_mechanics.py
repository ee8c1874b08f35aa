"""Euler–Lagrange, Legendre and canonical equations derived with JAX, against hand-written ones."""

import jax
import jax.numpy as jnp
import pytest

import deepest


def _lorenz63(t, x):
    # Time-dependent forcing so that the ∂²L/∂ẋ∂t term of the Euler–Lagrange equation matters.
    s, r, b = 10.0, 28.0, 8.0 / 3.0
    return jnp.stack(
        [s * (x[1] - x[0]), x[0] * (r - x[2]) - x[1] + jnp.sin(t), x[0] * x[1] - b * x[2]]
    )


def _lorenz63_jacobian(t, x):
    s, r, b = 10.0, 28.0, 8.0 / 3.0
    return jnp.array([[-s, s, 0.0], [r - x[2], -1.0, -x[0]], [x[1], x[0], -b]])


def _mass(x):
    return 1.0 + x**2


def _potential(x):
    return jnp.sum(jnp.cos(x)) + x[0] * x[1]


RF = 3.0


def _cases():
    # (Lagrangian, hand-written acceleration(t, x, v)).
    def quadratic_accel(t, x, v):
        # d/dt[R_f(ẋ − F)] = −R_f Jᵀ(ẋ − F)  ⇒  ẍ = J ẋ + ∂F/∂t − Jᵀ(ẋ − F).
        jac = _lorenz63_jacobian(t, x)
        dfdt = jnp.array([0.0, jnp.cos(t), 0.0])
        return jac @ v + dfdt - jac.T @ (v - _lorenz63(t, x))

    def mass_accel(t, x, v):
        # L = Σ ½ m(x_i) ẋ_i² − V(x): m ẍ + ½ m'(x) ẋ² = −∂V/∂x.
        grad_v = jnp.array([-jnp.sin(x[0]) + x[1], -jnp.sin(x[1]) + x[0]])
        return -(x * v**2 + grad_v) / _mass(x)

    quadratic = deepest.QuadraticLagrangian(_lorenz63, RF)
    mass = lambda t, x, v: 0.5 * jnp.sum(_mass(x) * v**2) - _potential(x)
    return [
        ("quadratic", quadratic, quadratic_accel, 3),
        ("position-dependent mass", mass, mass_accel, 2),
    ]


@pytest.mark.parametrize("name, lagrangian, accel, dim", _cases(), ids=lambda c: str(c)[:12])
def test_euler_lagrange_equals_hand_written(name, lagrangian, accel, dim, getkey):
    field = jax.jit(deepest.euler_lagrange(lagrangian))
    for _ in range(3):
        t = jax.random.uniform(getkey(), ())
        x = jax.random.normal(getkey(), (dim,))
        v = jax.random.normal(getkey(), (dim,))
        dx, dv = field(t, (x, v), None)
        assert jnp.array_equal(dx, v)
        # One LU solve of a 3×3 system: rounding-level agreement.
        assert jnp.allclose(dv, accel(t, x, v), rtol=1e-11, atol=1e-11)


def test_legendre_quadratic_closed_form_and_newton(getkey):
    quadratic = deepest.QuadraticLagrangian(_lorenz63, RF)
    closed = deepest.legendre(quadratic)
    # The same Lagrangian as a plain function goes through the Newton path.
    newton = deepest.legendre(lambda t, x, v: quadratic(t, x, v))
    t = 0.3
    x = jax.random.normal(getkey(), (3,))
    v = jax.random.normal(getkey(), (3,))
    p = closed.momentum(t, x, v)
    assert jnp.allclose(p, RF * (v - _lorenz63(t, x)), rtol=1e-14)
    exact_h = p @ _lorenz63(t, x) + p @ p / (2 * RF)
    assert jnp.allclose(closed.hamiltonian(t, x, p), exact_h, rtol=1e-13)
    assert jnp.allclose(newton.velocity(t, x, p), v, rtol=1e-10, atol=1e-10)
    assert jnp.allclose(newton.hamiltonian(t, x, p), exact_h, rtol=1e-10)
    # Hamilton's equations from 𝓗 equal the closed-form canonical equations.
    field = deepest.hamiltonian_field(closed.hamiltonian)
    dx, dp = field(t, (x, p), None)
    assert jnp.allclose(dx, _lorenz63(t, x) + p / RF, rtol=1e-13)
    assert jnp.allclose(dp, -_lorenz63_jacobian(t, x).T @ p, rtol=1e-12, atol=1e-12)


def test_legendre_position_dependent_mass(getkey):
    lagrangian = lambda t, x, v: 0.5 * jnp.sum(_mass(x) * v**2) - _potential(x)
    transform = deepest.legendre(lagrangian)
    x = jax.random.normal(getkey(), (2,))
    p = jax.random.normal(getkey(), (2,))
    exact = jnp.sum(p**2 / (2 * _mass(x))) + _potential(x)
    assert jnp.allclose(transform.hamiltonian(0.0, x, p), exact, rtol=1e-12)
    dx, dp = deepest.hamiltonian_field(transform.hamiltonian)(0.0, (x, p), None)
    assert jnp.allclose(dx, p / _mass(x), rtol=1e-10)
    # Differentiating through the Newton solve (implicit function theorem) gives ṗ too.
    exact_dp = -jax.grad(lambda x_: jnp.sum(p**2 / (2 * _mass(x_))) + _potential(x_))(x)
    assert jnp.allclose(dp, exact_dp, rtol=1e-9, atol=1e-10)


def test_singular_lagrangian_is_refused():
    # L = x·ẋ − |x|²/2 is linear in ẋ: ∂²L/∂ẋ² = 0, no Legendre transform.
    degenerate = lambda t, x, v: x @ v - 0.5 * x @ x
    x = jnp.ones(2)
    with pytest.raises(RuntimeError, match="singular"):
        deepest.legendre(degenerate).hamiltonian(0.0, x, x)
    with pytest.raises(RuntimeError, match="singular"):
        jax.jit(deepest.euler_lagrange(degenerate))(0.0, (x, x), None)
