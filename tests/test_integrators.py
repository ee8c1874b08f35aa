"""Tests of the symplectic schemes of `deepest.integrators` (issue 4, item 2).

Each property is checked against an independent answer: the symplecticity identity
Mᵀ J M = J of the one-step map, bounded energy error over long runs, the convergence order
against a tight scipy DOP853 reference, and finite differences for the implicit-function
gradient.
"""

import dataclasses

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import deepest
from deepest.integrators import (
    ImplicitMidpoint,
    StormerVerlet,
    SymplecticEuler,
    SymplecticGaussLegendre,
    gauss_legendre_tableau,
)

# name: (solver, nominal order, handles non-separable H)
SCHEMES = {
    "euler_p_first": (SymplecticEuler("p_first"), 1, True),
    "euler_x_first": (SymplecticEuler("x_first"), 1, True),
    "midpoint": (ImplicitMidpoint(), 2, True),
    "gauss2": (SymplecticGaussLegendre(n_stages=2), 4, True),
    "verlet_general": (StormerVerlet(separable=False), 2, True),
    "verlet": (StormerVerlet(), 2, False),
}
IMPLICIT = [name for name, (_, _, nonsep) in SCHEMES.items() if nonsep]


def hamiltonian_field(hamiltonian):
    """The vector field (ẋ, ṗ) = (∂H/∂p, −∂H/∂x) of `hamiltonian(x, p, args)`."""

    def field(t, y, args):
        x, p = y
        dh_dx, dh_dp = jax.grad(hamiltonian, argnums=(0, 1))(x, p, args)
        return dh_dp, -dh_dx

    return field


def nonseparable_h(x, p, args):
    """A nonlinear, non-separable Hamiltonian of 2 degrees of freedom (`args` a coupling)."""
    r2 = jnp.sum(x**2)
    return 0.5 * jnp.sum(p**2) * (1 + 0.5 * r2) + 0.5 * r2 + args * x[0] * p[1]


def henon_heiles_h(x, p, args):
    """Hénon–Heiles: separable, H = |p|²/2 + V(x), nonlinear V."""
    del args
    return 0.5 * jnp.sum(p**2) + 0.5 * jnp.sum(x**2) + x[0] ** 2 * x[1] - x[1] ** 3 / 3


def oscillator_h(x, p, args):
    """H = p²/2 + a x²/2 + b (1 − cos x): harmonic oscillator (1, 0), pendulum (0, 1)."""
    a, b = args
    return jnp.sum(0.5 * p**2 + 0.5 * a * x**2 + b * (1 - jnp.cos(x)))


def problem_for(name):
    """The Hamiltonian, args and initial state each scheme is tested on."""
    y0 = (jnp.array([0.6, -0.4]), jnp.array([0.3, 0.8]))
    if SCHEMES[name][2]:
        return nonseparable_h, 0.3, y0
    return henon_heiles_h, None, (jnp.array([0.3, -0.2]), jnp.array([0.2, 0.25]))


J = jnp.block([[jnp.zeros((2, 2)), jnp.eye(2)], [-jnp.eye(2), jnp.zeros((2, 2))]])


@pytest.mark.parametrize("name", SCHEMES)
def test_one_step_map_is_symplectic(name):
    solver = SCHEMES[name][0]
    hamiltonian, args, y0 = problem_for(name)
    term = dfx.ODETerm(hamiltonian_field(hamiltonian))

    def step(v):
        y = (v[:2], v[2:])
        state = solver.init(term, 0.0, 0.1, y, args)
        y1, _, _, _, result = solver.step(term, 0.0, 0.1, y, args, state, False)
        return jnp.concatenate(y1), result

    v0 = jnp.concatenate(y0)
    M, result = jax.jit(jax.jacfwd(step, has_aux=True))(v0)
    assert result == dfx.RESULTS.successful
    # The default Newton tolerance is 10·eps ≈ 2e-15 (≤ 1e-14, as the issue asks); the
    # derivative goes through the implicit function theorem, so M is the exact Jacobian of
    # the discrete map up to rounding in its linear solves.
    defect = jnp.max(jnp.abs(M.T @ J @ M - J))
    assert defect < 1e-12
    # A non-symplectic map of the same order fails the identity by far more than 1e-12,
    # so the check can fail: explicit Euler's defect is O(h²) here.
    field = hamiltonian_field(hamiltonian)
    M_euler = jax.jacfwd(lambda v: v + 0.1 * jnp.concatenate(field(0.0, (v[:2], v[2:]), args)))(v0)
    assert jnp.max(jnp.abs(M_euler.T @ J @ M_euler - J)) > 1e-4


@pytest.mark.parametrize("name", SCHEMES)
def test_energy_error_stays_bounded(name):
    solver = SCHEMES[name][0]
    n_steps, h = 10_000, 0.1
    term = dfx.ODETerm(hamiltonian_field(oscillator_h))
    y0 = (jnp.array([1.0]), jnp.array([0.5]))

    @jax.jit
    def energy_error(args):
        # A scan over `solver.step` compiles faster than `diffeqsolve`, which the other
        # tests use; the steps are the same.
        def one_step(y, t):
            y1, _, _, _, result = solver.step(term, t, t + h, y, args, None, False)
            return y1, (oscillator_h(*y1, args), result)

        _, (energy, results) = jax.lax.scan(one_step, y0, h * jnp.arange(n_steps * 1.0))
        return jnp.abs(energy - oscillator_h(*y0, args)), results

    for problem, args in [("harmonic", (1.0, 0.0)), ("pendulum", (0.0, 1.0))]:
        err, results = energy_error(args)
        assert jnp.all(results == dfx.RESULTS.successful)
        err = np.asarray(err)
        assert err.shape == (n_steps,) and np.all(np.isfinite(err))
        if problem == "harmonic" and name in ("midpoint", "gauss2"):
            # Gauss methods conserve quadratic invariants exactly (HLW IV.2): the error is a
            # random walk of rounding, ≈ √(10⁴)·eps. Its slope is not informative.
            assert err.max() < 1e-13
            continue
        # Measured: |slope| per 10³ steps ≤ 7e-5 of the maximum for every scheme here.
        slope_per_1e3 = np.polyfit(np.arange(n_steps), err, 1)[0] * 1e3
        assert abs(slope_per_1e3) < 1e-3 * err.max(), (problem, slope_per_1e3, err.max())
        # and it is the scheme's O(h^order) oscillation, not rounding noise
        assert 1e-12 < err.max() < 0.1


def reference_solution(hamiltonian, args, y0, t1):
    """y(t1) by scipy's DOP853 at tolerance 1e-13 (independent of diffrax)."""
    field = jax.jit(hamiltonian_field(hamiltonian))
    n = y0[0].size

    def rhs(t, v):
        dx, dp = field(t, (jnp.asarray(v[:n]), jnp.asarray(v[n:])), args)
        return np.concatenate([dx, dp])

    sol = scipy.integrate.solve_ivp(
        rhs, (0.0, t1), np.concatenate(y0), method="DOP853", rtol=1e-13, atol=1e-13
    )
    return sol.y[:n, -1], sol.y[n:, -1]


@pytest.mark.parametrize("name", SCHEMES)
def test_convergence_order(name):
    solver, order, _ = SCHEMES[name]
    hamiltonian, args, y0 = problem_for(name)
    term = dfx.ODETerm(hamiltonian_field(hamiltonian))
    t1 = 4.0

    @jax.jit
    def solve(dt0):
        sol = dfx.diffeqsolve(term, solver, 0.0, t1, dt0, y0, args, max_steps=512)
        return jax.tree.map(lambda a: a[-1], sol.ys), sol.result

    reference = reference_solution(hamiltonian, args, y0, t1)
    hs, errors = [], []
    for k in range(4, 9):
        h = t1 / 2**k
        y1, result = solve(h)
        assert result == dfx.RESULTS.successful
        hs.append(h)
        errors.append(
            max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(y1, reference, strict=True))
        )
    # The reference is accurate to ~1e-12; the smallest error (Gauss, h = 1/64) is ~3e-9.
    assert min(errors) > 1e-11
    fitted = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert abs(fitted - order) < 0.2, (fitted, errors)


@pytest.mark.parametrize("name", IMPLICIT)
def test_newton_failure_is_flagged_by_step(name):
    # One Newton iteration cannot meet the termination test (it needs two iterates).
    solver = dataclasses.replace(SCHEMES[name][0], root_find_max_steps=1)
    hamiltonian, args, y0 = problem_for(name)
    term = dfx.ODETerm(hamiltonian_field(hamiltonian))
    # (The default budget succeeds on this step: see test_one_step_map_is_symplectic.)
    result = jax.jit(lambda y: solver.step(term, 0.0, 0.1, y, args, None, False)[4])(y0)
    assert result == dfx.RESULTS.nonlinear_max_steps_reached


def test_newton_failure_through_diffeqsolve():
    solver = SymplecticGaussLegendre(root_find_max_steps=1)
    hamiltonian, args, y0 = problem_for("gauss2")
    term = dfx.ODETerm(hamiltonian_field(hamiltonian))
    sol = dfx.diffeqsolve(term, solver, 0.0, 1.0, 0.1, y0, args, throw=False)
    assert sol.result == dfx.RESULTS.nonlinear_max_steps_reached
    with pytest.raises(eqx.EquinoxRuntimeError, match="nonlinear solver"):
        dfx.diffeqsolve(term, solver, 0.0, 1.0, 0.1, y0, args, throw=True)


@pytest.mark.parametrize("name", ["euler_p_first", "gauss2", "verlet_general"])
def test_implicit_function_gradient_matches_finite_differences(name):
    solver = SCHEMES[name][0]
    hamiltonian, coupling, y0 = problem_for(name)
    term = dfx.ODETerm(hamiltonian_field(hamiltonian))
    weights = jnp.array([0.7, -1.3, 0.4, 1.1])

    def loss(v):
        # v = (x0, p0, coupling); h = 0.3, so that Newton makes several iterations.
        y1, _, _, _, _ = solver.step(term, 0.0, 0.3, (v[:2], v[2:4]), v[4], None, False)
        return jnp.sum(weights * jnp.sin(jnp.concatenate(y1)))

    v0 = jnp.concatenate([*y0, jnp.array([coupling])])
    # Central differences: truncation O(δ²) ≈ 1e-10 and rounding eps/δ ≈ 1e-11 for δ = 1e-5.
    delta = 1e-5
    loss_jit = jax.jit(loss)  # compiles faster than a vmapped loss (measured)
    fd = [(loss_jit(v0 + delta * e) - loss_jit(v0 - delta * e)) / (2 * delta) for e in jnp.eye(5)]
    grad = jax.jit(jax.grad(loss))(v0)
    np.testing.assert_allclose(grad, jnp.stack(fd), rtol=0, atol=1e-8)
    assert abs(grad[4]) > 1e-3  # the parameter gradient is not trivially zero


def test_gradient_through_diffeqsolve():
    # Reverse mode through diffrax's default adjoint (checkpointed steps) and the implicit
    # stages, 20 steps, against central differences in the coupling parameter.
    hamiltonian, coupling, y0 = problem_for("gauss2")
    term = dfx.ODETerm(hamiltonian_field(hamiltonian))

    def loss(c):
        sol = dfx.diffeqsolve(term, SymplecticGaussLegendre(), 0.0, 2.0, 0.1, y0, c)
        return jnp.sum(jnp.sin(sol.ys[0][-1])) + jnp.sum(sol.ys[1][-1] ** 2)

    delta = 1e-5
    loss_jit = jax.jit(loss)
    fd = (loss_jit(coupling + delta) - loss_jit(coupling - delta)) / (2 * delta)
    # measured difference 2e-11 (the finite-difference error)
    assert abs(jax.jit(jax.grad(loss))(coupling) - fd) < 1e-8


def test_gauss_legendre_tableau():
    a, b, c = (np.array(v) for v in gauss_legendre_tableau(2))
    r3 = np.sqrt(3)
    np.testing.assert_allclose(c, [0.5 - r3 / 6, 0.5 + r3 / 6], rtol=0, atol=1e-16)
    np.testing.assert_allclose(b, [0.5, 0.5], rtol=0, atol=1e-16)
    np.testing.assert_allclose(
        a, [[0.25, 0.25 - r3 / 6], [0.25 + r3 / 6, 0.25]], rtol=0, atol=1e-16
    )
    for s in (1, 2, 3):
        a, b, c = (np.array(v) for v in gauss_legendre_tableau(s))
        # symplecticity condition (HLW VI, Theorem 4.3) and the order conditions B(2s)
        m = b[:, None] * a + (b[:, None] * a).T - np.outer(b, b)
        assert np.max(np.abs(m)) < 1e-15
        for q in range(1, 2 * s + 1):
            assert abs(b @ c ** (q - 1) - 1 / q) < 1e-15


def test_orders_and_public_names():
    term = dfx.ODETerm(hamiltonian_field(nonseparable_h))
    for solver, order, _ in SCHEMES.values():
        assert solver.order(term) == order
    assert SymplecticGaussLegendre(n_stages=3).order(term) == 6
    assert deepest.integrators.SymplecticEuler is SymplecticEuler


def test_float32_state():
    # The default tolerance follows the state's dtype: 10·eps(float32) is reachable.
    term = dfx.ODETerm(hamiltonian_field(nonseparable_h))
    y0 = (jnp.array([0.6, -0.4], jnp.float32), jnp.array([0.3, 0.8], jnp.float32))
    t0, t1 = jnp.float32(0), jnp.float32(0.1)
    y1, _, _, _, result = eqx.filter_jit(SymplecticGaussLegendre().step)(
        term, t0, t1, y0, jnp.float32(0.3), None, False
    )
    assert result == dfx.RESULTS.successful
    assert y1[0].dtype == jnp.float32


# -- bad input ---------------------------------------------------------------------------


def test_mismatched_state_shapes():
    term = dfx.ODETerm(lambda t, y, args: (y[1], -y[0]))
    bad = (jnp.zeros(2), jnp.zeros(3))
    solver = ImplicitMidpoint()
    with pytest.raises(ValueError, match="same shapes"):
        solver.init(term, 0.0, 0.1, bad, None)
    with pytest.raises(ValueError, match="same shapes"):
        solver.step(term, 0.0, 0.1, bad, None, None, False)
    with pytest.raises(ValueError, match="pair"):
        solver.init(term, 0.0, 0.1, jnp.zeros(4), None)
    with pytest.raises(ValueError, match="same pytree structure"):
        solver.init(term, 0.0, 0.1, ((jnp.zeros(2),), jnp.zeros(2)), None)
    # Through diffeqsolve, diffrax's own term check meets the mismatch first (it broadcasts
    # the field's value to the state); it too raises at trace time.
    with pytest.raises(ValueError):
        dfx.diffeqsolve(term, solver, 0.0, 1.0, 0.1, bad)


def test_field_value_must_match_state():
    class Term(dfx.ODETerm):
        def vf(self, t, y, args):  # bypass ODETerm's broadcasting to show our check
            return self.vector_field(t, y, args)

    term = Term(lambda t, y, args: (y[1][:1], -y[0][:1]))
    with pytest.raises(ValueError, match="vector field must return"):
        SymplecticEuler().step(term, 0.0, 0.1, (jnp.zeros(2), jnp.zeros(2)), None, None, False)


def test_nonpositive_step_sizes():
    term = dfx.ODETerm(lambda t, y, args: (y[1], -y[0]))
    y0 = (jnp.array([1.0]), jnp.array([0.0]))
    solver = SymplecticEuler()
    with pytest.raises(eqx.EquinoxRuntimeError, match="step size must be positive"):
        dfx.diffeqsolve(term, solver, 0.0, 1.0, 0.0, y0)
    with pytest.raises(Exception, match="dt0"):  # diffrax's own check of the sign of dt0
        dfx.diffeqsolve(term, solver, 0.0, 1.0, -0.1, y0)
    with pytest.raises(Exception, match="forward in time"):
        solver.step(term, 1.0, 0.9, y0, None, None, False)


def test_adaptive_controller_is_refused():
    term = dfx.ODETerm(lambda t, y, args: (y[1], -y[0]))
    y0 = (jnp.array([1.0]), jnp.array([0.0]))
    with pytest.raises(RuntimeError, match="error estimates"):
        dfx.diffeqsolve(
            term,
            SymplecticGaussLegendre(),
            0.0,
            1.0,
            0.1,
            y0,
            stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-6),
        )


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SymplecticEuler("z_first"), "variant"),
        (lambda: SymplecticGaussLegendre(n_stages=0), "n_stages"),
        (lambda: ImplicitMidpoint(rtol=-1.0), "rtol"),
        (lambda: StormerVerlet(root_find_max_steps=0), "root_find_max_steps"),
    ],
)
def test_bad_configuration(make, match):
    with pytest.raises(ValueError, match=match):
        make()
