"""Lagrangian and Hamiltonian mechanics derived with JAX: Euler–Lagrange, Legendre, canonical.

A Lagrangian is any function `L(t, x, v)` of time, position `x` (1-D array) and velocity
`v = ẋ`, returning a scalar. The action A = ∫ L dt is stationary on solutions of the
Euler–Lagrange equation d/dt ∂L/∂v = ∂L/∂x; where the velocity Hessian ∂²L/∂v² is invertible
the Legendre transform p = ∂L/∂v, 𝓗(t, x, p) = p·v − L turns it into Hamilton's canonical
equations ẋ = ∂𝓗/∂p, ṗ = −∂𝓗/∂x. All derivatives here come from `jax`, linear solves from
`lineax` and the inverse Legendre map from `optimistix`.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float, Scalar

from ._misc import renamed_keywords

_SINGULAR = (
    "The velocity Hessian ∂²L/∂ẋ² of the Lagrangian is singular here, so the Lagrangian is "
    "degenerate: it has no Legendre transform and its Euler–Lagrange equation cannot be "
    "solved for ẍ. Use a Lagrangian that is strictly convex (or concave) in the velocity."
)


def _singular(hessian: Float[Array, "dim dim"]) -> Array:
    """Whether the velocity Hessian is numerically singular (or not finite)."""
    singular_values = jnp.linalg.svd(hessian, compute_uv=False)
    eps = jnp.finfo(hessian.dtype).eps
    tiny = singular_values[-1] <= 100 * eps * hessian.shape[0] * singular_values[0]
    return tiny | ~jnp.all(jnp.isfinite(hessian))


class QuadraticLagrangian(eqx.Module):
    """The Lagrangian of the continuous assimilation action, L = (R_f/2)|ẋ − F(t, x)|².

    Its Legendre transform is known in closed form (used by [`deepest.legendre`][]):
    p = R_f (ẋ − F), ẋ = F + p/R_f and 𝓗 = p·F + |p|²/(2 R_f).

    **Arguments:**

    - `field`: the model vector field `F(t, x)`.
    - `rf`: the model weight R_f > 0.

    **Example:**

        L = deepest.QuadraticLagrangian(lambda t, x: -x, rf=10.0)
        L(0.0, jnp.ones(2), jnp.zeros(2))  # 10.0
    """

    field: Callable
    rf: Float[ArrayLike, ""]

    def __call__(self, t, x, v) -> Scalar:
        residual = v - self.field(t, x)
        return 0.5 * self.rf * jnp.sum(residual**2)


def euler_lagrange(lagrangian: Callable) -> Callable:
    """The Euler–Lagrange equation of `L(t, x, ẋ)` as a first-order system for (x, ẋ).

    d/dt ∂L/∂ẋ = ∂L/∂x expands to the linear system for the acceleration

        (∂²L/∂ẋ²) ẍ = ∂L/∂x − (∂²L/∂ẋ∂x) ẋ − ∂²L/∂ẋ∂t,

    solved with `lineax` (LU). A singular ∂²L/∂ẋ² raises an error naming the cause.

    **Arguments:**

    - `lagrangian`: `L(t, x, v) -> scalar`, with `x` and `v` 1-D arrays of equal size.

    **Returns:** a diffrax vector field `field(t, (x, v), args) -> (ẋ, ẍ)` on the pair
    (x, v); `args` is ignored.

    **Example:**

        field = deepest.euler_lagrange(lambda t, x, v: 0.5 * v @ v - 0.5 * x @ x)
        diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Tsit5(), 0, 1, 0.01,
                            (jnp.ones(1), jnp.zeros(1)))
    """

    def field(t, y, args=None):
        del args
        x, v = y
        dl_dv = jax.grad(lagrangian, argnums=2)
        hessian = jax.jacfwd(dl_dv, argnums=2)(t, x, v)
        hessian = eqx.error_if(hessian, _singular(hessian), _SINGULAR)
        mixed_x = jax.jacfwd(dl_dv, argnums=1)(t, x, v)
        mixed_t = jax.jacfwd(dl_dv, argnums=0)(jnp.asarray(t, x.dtype), x, v)
        force = jax.grad(lagrangian, argnums=1)(t, x, v) - mixed_x @ v - mixed_t
        operator = lx.MatrixLinearOperator(hessian)
        acceleration = lx.linear_solve(operator, force, lx.LU()).value
        return v, acceleration

    return field


class Legendre(eqx.Module):
    """The Legendre transform of a Lagrangian (built by [`deepest.legendre`][]).

    - `momentum(t, x, v)`: p = ∂L/∂ẋ.
    - `velocity(t, x, p)`: the inverse map, ẋ solving ∂L/∂ẋ(t, x, ẋ) = p.
    - `hamiltonian(t, x, p)`: 𝓗 = p·ẋ − L(t, x, ẋ) at that ẋ.

    `rtol`, `atol`, `max_newton_steps`: the Newton solve of the inverse map (formerly
    `max_steps`, still accepted with a `DeprecationWarning`).
    """

    lagrangian: Callable
    rtol: float = eqx.field(static=True, default=1e-12)
    atol: float = eqx.field(static=True, default=1e-12)
    max_newton_steps: int = eqx.field(static=True, default=64)

    @renamed_keywords(max_steps="max_newton_steps")
    def __init__(
        self,
        lagrangian: Callable,
        rtol: float = 1e-12,
        atol: float = 1e-12,
        max_newton_steps: int = 64,
    ):
        # a written `__init__` only to read the former keyword `max_steps` (Newton steps)
        self.lagrangian = lagrangian
        self.rtol = rtol
        self.atol = atol
        self.max_newton_steps = max_newton_steps

    def momentum(self, t, x: Float[Array, " dim"], v: Float[Array, " dim"]) -> Array:
        if isinstance(self.lagrangian, QuadraticLagrangian):
            return self.lagrangian.rf * (v - self.lagrangian.field(t, x))
        return jax.grad(self.lagrangian, argnums=2)(t, x, v)

    def velocity(self, t, x: Float[Array, " dim"], p: Float[Array, " dim"]) -> Array:
        if isinstance(self.lagrangian, QuadraticLagrangian):
            return self.lagrangian.field(t, x) + p / self.lagrangian.rf
        # The inverse map exists locally where ∂²L/∂ẋ² is regular; check at the start
        # point so that a degenerate Lagrangian fails with a clear message, not a NaN.
        hessian = jax.jacfwd(jax.grad(self.lagrangian, argnums=2), argnums=2)
        start = jnp.zeros_like(p)
        start = eqx.error_if(start, _singular(hessian(t, x, start)), _SINGULAR)
        solution = optx.root_find(
            lambda v, _: self.momentum(t, x, v) - p,
            optx.Newton(self.rtol, self.atol),
            start,
            max_steps=self.max_newton_steps,
            throw=False,
        )
        v = eqx.error_if(solution.value, _singular(hessian(t, x, solution.value)), _SINGULAR)
        return eqx.error_if(
            v,
            solution.result != optx.RESULTS.successful,
            "The Newton solve for the velocity ẋ with ∂L/∂ẋ = p did not converge: the "
            "Legendre map is not invertible from ẋ = 0 here.",
        )

    def hamiltonian(self, t, x: Float[Array, " dim"], p: Float[Array, " dim"]) -> Scalar:
        if isinstance(self.lagrangian, QuadraticLagrangian):
            rf = self.lagrangian.rf
            return jnp.dot(p, self.lagrangian.field(t, x)) + jnp.sum(p**2) / (2 * rf)
        v = self.velocity(t, x, p)
        return jnp.dot(p, v) - self.lagrangian(t, x, v)


def legendre(lagrangian: Callable, *, rtol: float = 1e-12, atol: float = 1e-12) -> Legendre:
    """The canonical momentum and the Hamiltonian of `L(t, x, ẋ)` by Legendre transform.

    p = ∂L/∂ẋ and 𝓗(t, x, p) = p·ẋ − L(t, x, ẋ), with ẋ(t, x, p) the inverse of the momentum
    map. For a [`deepest.QuadraticLagrangian`][] (the assimilation action) this is closed
    form, 𝓗 = p·F + |p|²/(2 R_f); otherwise ẋ is found by Newton's method (`optimistix`,
    started at ẋ = 0) and the transform is differentiable through the implicit function
    theorem. A Lagrangian with singular ∂²L/∂ẋ² raises an error that says so.

    **Arguments:**

    - `lagrangian`: `L(t, x, v) -> scalar`.
    - `rtol`, `atol`: Newton tolerances for the inverse momentum map.

    **Returns:** a [`deepest.Legendre`][] with `momentum`, `velocity` and `hamiltonian`.

    **Example:**

        H = deepest.legendre(lambda t, x, v: 0.5 * v @ v - jnp.cos(x).sum()).hamiltonian
        field = deepest.hamiltonian_field(H)
    """
    return Legendre(lagrangian, rtol, atol)


def hamiltonian_field(hamiltonian: Callable) -> Callable:
    """Hamilton's canonical equations of `𝓗(t, x, p)`: ẋ = ∂𝓗/∂p, ṗ = −∂𝓗/∂x (via `jax.grad`).

    **Arguments:**

    - `hamiltonian`: `H(t, x, p) -> scalar`.

    **Returns:** a diffrax vector field `field(t, (x, p), args) -> (ẋ, ṗ)` on the pair
    (x, p), usable with `diffrax.ODETerm` and with the symplectic solvers of
    `deepest.integrators`; `args` is ignored.

    **Example:**

        field = deepest.hamiltonian_field(lambda t, x, p: 0.5 * (x @ x + p @ p))
        field(0.0, (jnp.ones(1), jnp.zeros(1)), None)  # (0, -1)
    """

    def field(t, y, args=None):
        del args
        x, p = y
        dh_dx, dh_dp = jax.grad(hamiltonian, argnums=(1, 2))(t, x, p)
        return dh_dp, -dh_dx

    return field
