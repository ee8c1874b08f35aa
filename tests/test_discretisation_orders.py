"""The discretisations of the weak-constraint action: their orders against the continuous
minimiser, scalar times for time-dependent fields, and the Gauss–Legendre residuals."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

import deepest
from deepest.discretisations import DISCRETISATIONS as SCHEMES, RK4, as_discretisation

# A forced, damped linear oscillator F(t, x) = A x + (0, a cos ωt): the (x, p) system is
# linear, so the continuous minimiser has a closed form and each discrete action is
# quadratic in the path (one Newton step minimises it exactly).
A = np.array([[0.0, 1.0], [-1.0, -0.2]])
OMEGA, FORCE = 2.0, 0.8
TIMES = np.array([0.0, 1.0, 2.0])
VALUES = np.array([[1.0, -0.5], [0.3, 0.6], [0.2, 0.8]])
RF, RM = 1.0, 10.0  # |ẋ − F| = |p|/R_f is O(1): the regime where forward maps lose order


def forced_oscillator(t, x, params):
    assert jnp.shape(t) == (), f"the field got a time of shape {jnp.shape(t)}"
    return jnp.asarray(A) @ x + jnp.stack([0.0 * t, FORCE * jnp.cos(OMEGA * t)])


def continuous_minimiser(ts):
    """x(t) of the continuous action's minimiser (the TPBVP solution) at times `ts`.

    The canonical equations ẋ = A x + (0, a cos ωt) + p/R_f, ṗ = −Aᵀ p with (cos ωt, sin ωt)
    appended are linear and autonomous, so each stretch between observations is a matrix
    exponential; p(0) = R_m(x(0) − y_0), p jumps by R_m(x − y_k) at the interior observation
    and p(T) = −R_m(x(T) − y_N) fixes the unknown x(0) (a 2 × 2 linear solve). It agrees with
    `deepest.solve_tpbvp(MultipleShooting(4, steps_per_segment=128))` to 3e-14.
    """
    m = np.zeros((6, 6))
    m[:2, :2], m[:2, 2:4], m[1, 4] = A, np.eye(2) / RF, FORCE
    m[2:4, 2:4] = -A.T
    m[4, 5], m[5, 4] = -OMEGA, OMEGA

    def starts(x0):
        """The state (x, p, cos, sin) just after each observation time but the last."""
        z = np.concatenate([x0, RM * (x0 - VALUES[0]), [1.0, 0.0]])
        out = [z]
        for k in range(1, len(TIMES)):
            z = scipy.linalg.expm(m * (TIMES[k] - TIMES[k - 1])) @ z
            if k < len(TIMES) - 1:
                z = z.copy()
                z[2:4] += RM * (z[:2] - VALUES[k])
                out.append(z)
        end = z[2:4] + RM * (z[:2] - VALUES[-1])
        return out, end

    _, b0 = starts(np.zeros(2))
    jac = np.stack([starts(e)[1] - b0 for e in np.eye(2)], axis=1)
    z_starts, _ = starts(np.linalg.solve(jac, -b0))
    k = np.clip(np.searchsorted(TIMES, ts, side="right") - 1, 0, len(TIMES) - 2)
    return np.stack(
        [(scipy.linalg.expm(m * (t - TIMES[i])) @ z_starts[i])[:2] for t, i in zip(ts, k)]
    )


@eqx.filter_jit
def _discrete_minimiser(problem, rf, unknowns):
    """The exact minimiser of an action quadratic in the unknowns (one Newton step from
    them), its Hessian's columns the gradient's differences along unit vectors (cheaper to
    compile than `jax.hessian`)."""
    v, unravel = ravel_pytree(unknowns)
    grad = jax.vmap(jax.grad(lambda v: problem.action(unravel(v), rf)))
    gradients = grad(jnp.concatenate([v[None], v[None] + jnp.eye(v.size, dtype=v.dtype)]))
    hessian = gradients[1:] - gradients[:1]
    return unravel(v - jnp.linalg.solve(hessian, gradients[0]))


ORDERS = {"euler": 1, "trapezoid": 2, "rk4": 1, "simpson_hermite": 2, "gauss_legendre": 4}


@pytest.mark.parametrize("discretisation", [d.name for d in SCHEMES])
def test_discrete_minimiser_converges_at_the_discretisation_order(discretisation):
    # The discrete action with deepest.discrete_weights approximates the continuous one; its
    # minimiser's error at the model times, against the continuous minimiser, at three steps.
    data = deepest.Observations(TIMES, VALUES, [0, 1])
    t_span = float(TIMES[-1] - TIMES[0])
    steps, errors = [], []
    for steps_per_obs in (4, 8, 16):
        n_steps = (len(TIMES) - 1) * steps_per_obs
        rf, rm = deepest.discrete_weights(
            RF, RM, dim=2, t1=t_span, n_steps=n_steps, n_measured=VALUES.size
        )
        problem = deepest.Assimilation(
            forced_oscillator,
            data,
            rm,
            dim=2,
            params={},
            discretisation=discretisation,
            steps_per_obs=steps_per_obs,
        )
        unknowns = {"path": jnp.zeros((problem.n_model, 2)), "params": {}}
        if as_discretisation(discretisation).has_midpoints:
            unknowns["midpoints"] = jnp.zeros((problem.n_model - 1, 2))
        minimiser = _discrete_minimiser(problem, rf, unknowns)
        exact = continuous_minimiser(np.asarray(problem.ts))
        errors.append(float(np.max(np.abs(np.asarray(minimiser["path"]) - exact))))
        steps.append(t_span / n_steps)
    order = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    print(f"{discretisation}: errors {errors}, order {order:.2f}")
    # Measured: euler 1.01, trapezoid 1.99, rk4 1.00, simpson_hermite 1.98, gauss_legendre
    # 3.98 (errors 7e-6 … 3e-8). The forward maps (euler, rk4) are order 1: x(n+1) − Φ_h(x(n))
    # evaluates F along the model flow from x(n), not along the path, which leaves an
    # O(h·|p|/R_f) error; gauss_legendre's residuals are Gauss quadrature of |ẋ − F|² on a
    # piecewise-quadratic path.
    expected = ORDERS[discretisation]
    assert expected - 0.2 < order < expected + 0.3, (errors, order)


@pytest.mark.parametrize("discretisation", [d.name for d in SCHEMES])
def test_time_dependent_field_gets_scalar_times(discretisation):
    # forced_oscillator asserts a scalar t when traced; the action must be finite.
    data = deepest.Observations(TIMES, VALUES, [0, 1])
    problem = deepest.Assimilation(
        forced_oscillator, data, 1.0, dim=2, params={}, discretisation=discretisation
    )
    unknowns = problem.init(jr.key(0))
    assert jnp.isfinite(eqx.filter_jit(problem.action)(unknowns, 1.0))


def test_rk4_residual_uses_the_stage_times():
    # A path of hand-computed RK4 steps of the forced oscillator has zero "rk4" residuals
    # (the stages at t_n + h/2 and t_n + h, as scalars: forced_oscillator asserts it).
    h, t0 = 0.3, 0.7
    field = lambda t, x: forced_oscillator(t, x, {})
    x = [jnp.array([1.0, -0.5])]
    ts = t0 + h * np.arange(4)
    for t in ts[:-1]:
        k1 = field(t, x[-1])
        k2 = field(t + h / 2, x[-1] + h / 2 * k1)
        k3 = field(t + h / 2, x[-1] + h / 2 * k2)
        k4 = field(t + h, x[-1] + h * k3)
        x.append(x[-1] + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
    (residual,) = RK4().residuals(forced_oscillator, jnp.asarray(ts), jnp.stack(x), {})
    assert float(jnp.max(jnp.abs(residual))) < 1e-15


def test_gauss_legendre_banded_residuals():
    # as tests/test_minimisers.py checks the other discretisations
    values = jr.normal(jr.key(0), (9, 3))
    mask = np.ones(values.shape, bool)
    mask[3, 1] = mask[7, 0] = False
    data = deepest.Observations(0.05 * np.arange(9), values, [0, 2, 4], mask=mask)
    problem = deepest.Assimilation(
        deepest.models.Lorenz96(8.0),
        data,
        rm=1 / 0.4**2,
        dim=6,
        discretisation="gauss_legendre",
        steps_per_obs=2,
        estimate=("forcing",),
    )
    u = problem.init(jr.key(3))
    states, params = problem.to_banded(u)
    n, width, n_params = problem.banded_shape
    assert states.shape == (n, width) and params.shape == (n_params,)
    back = problem.from_banded(states, params)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), back, u))
    rf = jnp.linspace(1.0, 3.0, problem.dim)
    node, interval = eqx.filter_jit(problem.banded_residuals)(states, params, rf)
    total = jnp.sum(node**2) + jnp.sum(interval**2)
    assert float(total) == pytest.approx(float(eqx.filter_jit(problem.action)(u, rf)), rel=1e-13)
    # node row i depends on states[i] only, interval row i on states[i] and states[i + 1]
    jacobian = jax.jit(lambda s, p: jax.jacfwd(problem.banded_residuals)(s, p, 1.0))
    node_jac, interval_jac = jacobian(states, params)
    touched = np.abs(np.asarray(node_jac)).sum(axis=(1, 3)) > 0
    assert not np.any(touched & ~np.eye(n, dtype=bool))
    touched = np.abs(np.asarray(interval_jac)).sum(axis=(1, 3)) > 0
    allowed = np.eye(n - 1, n, dtype=bool) | np.eye(n - 1, n, k=1, dtype=bool)
    assert not np.any(touched & ~allowed)
