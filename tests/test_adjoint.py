"""The partner costate sweep and the reversible sweep against JAX's reverse mode."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest
from deepest.integrators import (
    ClassicalRK4,
    ReversibleRK,
    partner_step,
    partner_sweep,
    partner_tableau,
    rk_increment,
    tableau_coefficients,
)


def _relative_error(tree, reference):
    """Largest normwise relative error over the leaves of two pytrees."""
    pairs = zip(jax.tree.leaves(tree), jax.tree.leaves(reference), strict=True)
    return max(float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) for a, b in pairs)


class _TimeField(eqx.Module):
    """A nonlinear, explicitly time-dependent field F(t, x) = tanh(W x + b sin t)."""

    weight: jax.Array
    bias: jax.Array

    def __call__(self, t, x):
        return jnp.tanh(self.weight @ x + self.bias * jnp.sin(3 * t))


def _time_field(key, dim=3):
    wkey, bkey = jr.split(key)
    return _TimeField(jr.normal(wkey, (dim, dim)), jr.normal(bkey, (dim,)))


# Explicit tableaux with every weight nonzero: the partner tableau exists.
FULL_WEIGHT = [diffrax.Euler(), diffrax.Heun(), diffrax.Ralston(), ClassicalRK4()]
# Zero weights (the FSAL stage): only the division-free form applies.
ZERO_WEIGHT = [diffrax.Midpoint(), diffrax.Bosh3(), diffrax.Dopri5(), diffrax.Tsit5()]


@pytest.mark.parametrize("solver", FULL_WEIGHT, ids=lambda s: type(s).__name__)
def test_partner_tableau_symplecticity_condition(solver):
    a, b, _ = tableau_coefficients(solver)
    a_bar, b_bar, _ = partner_tableau(solver)
    np.testing.assert_array_equal(b_bar, b)
    lhs = b[:, None] * a_bar + b[None, :] * a.T
    assert np.max(np.abs(lhs - np.outer(b, b))) <= 1e-15


@pytest.mark.parametrize("solver", ZERO_WEIGHT, ids=lambda s: type(s).__name__)
def test_partner_tableau_refuses_zero_weights(solver):
    assert np.any(tableau_coefficients(solver)[1] == 0)
    with pytest.raises(ValueError, match="division-free"):
        partner_tableau(solver)


def test_tableau_coefficients_rejects_implicit_and_unknown():
    with pytest.raises(ValueError, match="explicit"):
        tableau_coefficients(diffrax.Kvaerno3.tableau)
    with pytest.raises(TypeError, match="explicit diffrax Runge-Kutta"):
        tableau_coefficients(diffrax.ReversibleHeun())


@pytest.mark.parametrize("solver", [diffrax.Heun(), ClassicalRK4()], ids=lambda s: type(s).__name__)
def test_division_free_sweep_equals_partner_tableau(solver, getkey):
    # For a linear time-dependent field F = A(t) x, Sanz-Serna's partner advances λ by
    #   Λ_i = λ_n − h Σ_j ā_ij A(t_n + c_j h)ᵀ Λ_j,   λ_{n+1} = λ_n − h Σ_i b_i A(t_n + c_i h)ᵀ Λ_i,
    # an implicit linear system for (λ_n, Λ) given λ_{n+1}; it must agree with the
    # division-free sweep.
    dim = 3
    base = jr.normal(getkey(), (dim, dim))
    drift = jr.normal(getkey(), (dim, dim))

    class Linear(eqx.Module):
        base: jax.Array
        drift: jax.Array

        def __call__(self, t, x):
            return (self.base + jnp.cos(t) * self.drift) @ x

    field = Linear(base, drift)
    t0, h = 0.3, 0.2
    x, costate_next = jr.normal(getkey(), (dim,)), jr.normal(getkey(), (dim,))
    a_bar, b, c = partner_tableau(solver)
    s = len(b)
    mats = [np.asarray(field.base + np.cos(t0 + c_i * h) * field.drift) for c_i in c]
    # Unknowns (λ_n, Λ_1..Λ_s), stacked.
    n_unknowns = (s + 1) * dim
    system = np.zeros((n_unknowns, n_unknowns))
    rhs = np.zeros(n_unknowns)
    eye = np.eye(dim)
    for i in range(s):
        rows = slice((i + 1) * dim, (i + 2) * dim)
        system[rows, (i + 1) * dim : (i + 2) * dim] += eye
        system[rows, :dim] -= eye
        for j in range(s):
            system[rows, (j + 1) * dim : (j + 2) * dim] += h * a_bar[i, j] * mats[j].T
    system[:dim, :dim] = eye
    for i in range(s):
        system[:dim, (i + 1) * dim : (i + 2) * dim] = -h * b[i] * mats[i].T
    rhs[:dim] = np.asarray(costate_next)
    costate_tableau = np.linalg.solve(system, rhs)[:dim]
    costate_sweep, _ = partner_step(field, tableau_coefficients(solver), t0, h, x, costate_next)
    np.testing.assert_allclose(costate_sweep, costate_tableau, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(
    "solver",
    # Midpoint has a zero weight on a stage that feeds another; Dopri5 and Tsit5 on a stage
    # that feeds none (FSAL).
    [
        diffrax.Euler(),
        diffrax.Heun(),
        ClassicalRK4(),
        diffrax.Midpoint(),
        diffrax.Dopri5(),
        diffrax.Tsit5(),
    ],
    ids=lambda s: type(s).__name__,
)
def test_partner_step_is_the_transposed_diffrax_step(solver, getkey):
    # Reference: JAX's VJP of one whole diffrax step (only here, as the reference).
    field = _time_field(getkey())
    term = diffrax.ODETerm(lambda t, y, f: f(t, y))
    t0, t1 = 0.2, 0.45
    x, costate_next = jr.normal(getkey(), (3,)), jr.normal(getkey(), (3,))

    coefficients = tableau_coefficients(solver)

    def diffrax_step(f, y):
        state = solver.init(term, t0, t1, y, f)
        return solver.step(term, t0, t1, y, f, state, False)[0]

    @jax.jit
    def both(field, x, costate_next):
        x_next, step_vjp = jax.vjp(diffrax_step, field, x)
        increment = rk_increment(field, coefficients, t0, t1 - t0, x)
        partner = partner_step(field, coefficients, t0, t1 - t0, x, costate_next)
        return x_next, step_vjp(costate_next), increment, partner

    x_next, (grad_ref, costate_ref), increment, (costate, grad) = both(field, x, costate_next)
    np.testing.assert_allclose(x + increment, x_next, rtol=1e-14, atol=1e-15)
    assert _relative_error(costate, costate_ref) <= 1e-14
    assert _relative_error(grad, grad_ref) <= 1e-14


def test_partner_sweep_rejects_decreasing_times():
    field = _time_field(jr.key(0))
    ts = jnp.array([0.0, 0.2, 0.1])
    with pytest.raises(eqx.EquinoxRuntimeError, match="must increase"):
        partner_sweep(
            field, tableau_coefficients(ClassicalRK4()), ts, jnp.ones((3, 3)), jnp.ones(3)
        )


def _loss_grad(net, x):
    return eqx.filter_grad(lambda n: jnp.sum(jnp.sin(n(x))))(net)


_loss_grad_jit = eqx.filter_jit(_loss_grad)

FIXED = [diffrax.Euler(), diffrax.Heun(), ClassicalRK4(), diffrax.Dopri5()]


@pytest.mark.parametrize("solver", FIXED, ids=lambda s: type(s).__name__)
def test_costate_gradient_equals_autodiff_fixed_steps(solver, getkey):
    field = _time_field(getkey())
    x = jr.normal(getkey(), (3,))
    grads = {
        adjoint: _loss_grad_jit(
            deepest.ContinuousNetwork(field, 1.5, 12, solver=solver, adjoint=adjoint), x
        )
        for adjoint in ("autodiff", "costate")
    }
    # Both are the exact gradient of one discrete forward pass: they differ by rounding.
    assert _relative_error(grads["costate"], grads["autodiff"]) <= 1e-12


@pytest.mark.parametrize(
    "solver", [diffrax.Dopri5(), diffrax.Tsit5()], ids=lambda s: type(s).__name__
)
def test_costate_gradient_equals_autodiff_adaptive_replay(solver, getkey):
    field = _time_field(getkey())
    x = jr.normal(getkey(), (3,))
    controller = diffrax.PIDController(rtol=1e-7, atol=1e-9)

    def network(adjoint):
        return deepest.ContinuousNetwork(
            field,
            3.0,
            4,
            solver=solver,
            adjoint=adjoint,
            stepsize_controller=controller,
            max_steps=128,
        )

    grad_costate = _loss_grad_jit(network("costate"), x)
    if isinstance(solver, diffrax.Dopri5):
        # diffrax's PIDController stops gradients through its step-size choice, so the
        # `autodiff` mode also treats the accepted times as fixed (one solver suffices).
        grad_autodiff = _loss_grad_jit(network("autodiff"), x)
        assert _relative_error(grad_costate, grad_autodiff) <= 1e-12
    # Independent reference with the accepted step times held fixed: record them, then
    # differentiate a diffrax solve that steps to exactly those times.
    term = diffrax.ODETerm(lambda t, y, f: f(t, y))
    sol = diffrax.diffeqsolve(
        term,
        solver,
        0.0,
        3.0,
        3.0 / 4,
        x,
        args=field,
        stepsize_controller=controller,
        max_steps=128,
        saveat=diffrax.SaveAt(steps=True),
    )
    n_accepted = int(sol.stats["num_accepted_steps"])
    assert 10 <= n_accepted < 128  # really adaptive, and the buffer was large enough
    ts = jnp.concatenate([jnp.zeros(1), sol.ts[:n_accepted]])
    steps = jnp.diff(ts)
    assert float(jnp.max(steps) / jnp.min(steps[:-1])) > 1.5  # unequal steps

    def replay(f):
        out = diffrax.diffeqsolve(
            term,
            solver,
            0.0,
            3.0,
            None,
            x,
            args=f,
            stepsize_controller=diffrax.StepTo(ts),
            max_steps=n_accepted,
        )
        return jnp.sum(jnp.sin(out.ys[-1]))

    grad_replay = eqx.filter_grad(replay)(field)
    assert _relative_error(grad_costate.field, grad_replay) <= 1e-12


def test_reversible_gradient_equals_autodiff_through_reversible_scheme(getkey):
    field = _time_field(getkey())
    x = jr.normal(getkey(), (3,))
    scheme = ReversibleRK(ClassicalRK4(), coupling=0.999)
    grad_reversible = _loss_grad_jit(
        deepest.ContinuousNetwork(field, 2.0, 64, solver=scheme, adjoint="reversible"), x
    )
    grad_autodiff = _loss_grad_jit(
        deepest.ContinuousNetwork(field, 2.0, 64, solver=scheme, adjoint="autodiff"), x
    )
    # The backward pass rebuilds the states; rounding errors in the rebuilt states grow
    # by at most 1/λ per step (here 1.001^64), far below the 1e-10 asked.
    assert _relative_error(grad_reversible, grad_autodiff) <= 1e-10


def test_reversible_gradient_stays_exact_over_many_steps(getkey):
    # A smooth tanh MLP field on T = 1. With the default coupling rate κ = 1
    # (λ_n = exp(−κh)) the backward rebuild amplifies rounding by at most e^{κT} ≈ 2.7
    # along the spurious mode however many steps are taken, so 2·10⁴ steps stay at
    # rounding. A fixed λ = 0.999 amplifies by 1.001^{2·10⁴} ≈ 5e8 there: the check
    # that it fails 1e-10 shows what the rate fixes (measured: 1.2e-10 at 10⁴ steps,
    # 2e-2 at 3·10⁴).
    field = eqx.nn.MLP(8, 8, 8, 1, activation=jnp.tanh, key=getkey())
    x = jr.normal(getkey(), (8,))
    n_steps = 20_000

    def error(scheme):
        def network(adjoint):
            return deepest.ContinuousNetwork(field, 1.0, n_steps, solver=scheme, adjoint=adjoint)

        grad = _loss_grad_jit(network("reversible"), x)
        return _relative_error(grad, _loss_grad_jit(network("autodiff"), x))

    assert error(ReversibleRK(diffrax.Heun())) <= 1e-10
    assert error(ReversibleRK(diffrax.Heun(), coupling=0.999)) > 1e-10


@pytest.mark.parametrize(
    "base, coupling",
    [
        (diffrax.Heun(), dict(coupling=0.5)),
        (ClassicalRK4(), dict(coupling=0.5)),
        (ClassicalRK4(), dict(coupling_rate=3.0)),
    ],
    ids=["Heun-λ=0.5", "RK4-λ=0.5", "RK4-κ=3"],
)
def test_reversible_scheme_is_stable_on_decay(base, coupling):
    # y' = −y, h = 0.1, 10⁵ steps. Reversible Heun overflows here; the reversible RK
    # does not when its spurious mode (eigenvalue ≈ λ/R(−0.1), R(−0.1) ≈ 0.905 the base
    # scheme's amplification) decays faster than the solution, λ < R(−0.1)², i.e. a
    # fixed λ = 0.5 or a coupling rate κ = 3 > 2 (twice the field's contraction rate):
    # then its error stays within 2× that of its base scheme.
    term = diffrax.ODETerm(lambda t, y, args: -y)
    n_steps = 100_000

    def errors(solver):
        sol = diffrax.diffeqsolve(
            term,
            solver,
            0.0,
            0.1 * n_steps,
            0.1,
            jnp.ones(1),
            saveat=diffrax.SaveAt(steps=True),
            max_steps=n_steps,
        )
        exact = jnp.exp(-sol.ts)
        error = jnp.abs(sol.ys[:, 0] - exact)
        # Max absolute error over all steps, and the relative error at t = 500 (after
        # 5000 steps), which exposes a growing spurious mode long before it overflows.
        return float(jnp.max(error)), float(error[4999] / exact[4999])

    base_abs, base_rel = errors(base)
    rev_abs, rev_rel = errors(ReversibleRK(base, **coupling))
    assert np.isfinite(rev_abs) and rev_abs <= 2 * base_abs
    assert rev_rel <= 2 * base_rel
    heun_abs, _ = errors(diffrax.ReversibleHeun())
    assert not np.isfinite(heun_abs) or heun_abs > 1.0


def _peak_bytes(adjoint, n_steps, field, x):
    net = deepest.ContinuousNetwork(field, 1.0, n_steps, adjoint=adjoint)
    grad = jax.jit(_loss_grad)
    analysis = grad.lower(net, x).compile().memory_analysis()
    return (
        analysis.temp_size_in_bytes
        + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
    )


def test_reversible_gradient_memory_is_flat_in_steps(getkey):
    field = _time_field(getkey(), dim=16)
    x = jr.normal(getkey(), (16,))
    small = _peak_bytes("reversible", 1_000, field, x)
    large = _peak_bytes("reversible", 100_000, field, x)
    # Anything stored per step would add at least 10⁵ × 8 bytes.
    assert large <= small


def test_costate_grad_works_on_continuous_networks(getkey):
    field = _time_field(getkey())
    decoder = eqx.nn.Linear(3, 2, key=getkey())
    xs, ys = jr.normal(getkey(), (5, 3)), jr.normal(getkey(), (5, 2))

    def mse(y_hat, y):
        return jnp.mean((y_hat - y) ** 2)

    def network(adjoint):
        return deepest.ContinuousNetwork(field, 1.0, 10, adjoint=adjoint, decoder=decoder)

    # (The reversible mode's `costate_sweep` is checked in test_continuous.py.)
    grad = eqx.filter_jit(deepest.costate_grad(mse))(network("costate"), xs, ys)
    reference = eqx.filter_jit(eqx.filter_grad(lambda n: mse(jax.vmap(n)(xs), ys)))(
        network("autodiff")
    )
    assert jax.tree.structure(grad) == jax.tree.structure(
        eqx.filter(network("costate"), eqx.is_inexact_array)
    )
    assert _relative_error(grad, reference) <= 1e-12
