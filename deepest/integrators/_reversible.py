"""The reversible Runge--Kutta scheme of McCallum & Foster (2024), as a diffrax solver."""

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._tableaux import RK4, rk_increment, tableau_coefficients


class ReversibleRK(diffrax.AbstractSolver):
    """Algebraically reversible Runge--Kutta method with a coupling parameter.

    Wraps an explicit RK base scheme with increment Ψ_h(t, x) (the base step's
    x_{n+1} − x_n) into a scheme on the pair (y, z), started at y_0 = z_0 = x_0:

        y_{n+1} = λ y_n + (1 − λ) z_n + Ψ_h(t_n, z_n),
        z_{n+1} = z_n − Ψ_{−h}(t_{n+1}, y_{n+1}),

    whose steps are inverted exactly, in closed form:

        z_n = z_{n+1} + Ψ_{−h}(t_{n+1}, y_{n+1}),
        y_n = (y_{n+1} − (1 − λ) z_n − Ψ_h(t_n, z_n)) / λ.

    The solution is y; it has the order of the base scheme. A backward sweep can rebuild
    every state from the last one, so a gradient needs memory independent of the number
    of steps (`ContinuousNetwork(adjoint="reversible")`).

    Stability (linear analysis on x' = σx, R the base scheme's stability function): the
    step has eigenvalues ≈ R(hσ) (the solution) and ≈ λ/R(hσ) (a spurious mode; their
    product is λ). Forward stability needs λ < |R(hσ)| on the dissipative modes: on
    y' = −y with h = 0.1, λ = 0.5 is stable (where reversible Heun overflows) while
    λ = 0.999 is not. Rebuilding the states backward amplifies rounding by about 1/λ per
    step (and by the field's own contraction, as any exact reversal must), so λ close to
    1 keeps long smooth solves accurate. Choose λ for the problem.

    The state z is carried as diffrax's solver state. Fixed steps only (no error estimate).

    ??? cite "Reference"

        S. McCallum and J. Foster, "Efficient, Accurate and Stable Gradients for Neural
        ODEs", arXiv:2410.11648 (2024).

    **Arguments:**

    - `base`: the explicit base solver (`deepest.integrators.RK4`, `diffrax.Heun`,
        `diffrax.Dopri5`, ...); default RK4.
    - `coupling`: λ ∈ (0, 1]; default 0.999 (accurate reversal over many smooth steps;
        lower it for strongly dissipative fields or large steps, see above).

    **Example:**

    ```python
    solver = deepest.integrators.ReversibleRK(diffrax.Heun(), coupling=0.999)
    sol = diffrax.diffeqsolve(term, solver, 0.0, 10.0, 0.1, y0)
    ```
    """

    base: diffrax.AbstractSolver = RK4()
    coupling: float = eqx.field(static=True, default=0.999)

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = (
        diffrax.LocalLinearInterpolation
    )

    def __check_init__(self):
        if not 0.0 < self.coupling <= 1.0:
            raise ValueError(
                f"The coupling parameter must lie in (0, 1]; got {self.coupling}. "
                "Values just below 1 (e.g. 0.999) keep the base scheme's accuracy."
            )
        tableau_coefficients(self.base)  # raises TypeError for a non-explicit-RK base

    def order(self, terms):
        return self.base.order(terms)

    def init(self, terms, t0, t1, y0, args):
        del terms, t0, t1, args
        return y0

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        y1, z1 = reversible_step(
            lambda t, x: terms.vf(t, x, args),
            tableau_coefficients(self.base),
            self.coupling,
            t0,
            t1,
            y0,
            solver_state,
        )
        dense_info = dict(y0=y0, y1=y1)
        return y1, None, dense_info, z1, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def reversible_step(
    field: Callable,
    coefficients,
    coupling: float,
    t0: Float[Array, ""],
    t1: Float[Array, ""],
    y: Float[Array, " dim"],
    z: Float[Array, " dim"],
) -> tuple[Float[Array, " dim"], Float[Array, " dim"]]:
    """One forward step (y_n, z_n) ↦ (y_{n+1}, z_{n+1}) of [`ReversibleRK`][]."""
    h = t1 - t0
    y1 = coupling * y + (1 - coupling) * z + rk_increment(field, coefficients, t0, h, z)
    z1 = z - rk_increment(field, coefficients, t1, -h, y1)
    return y1, z1


def reversible_step_back(
    field: Callable,
    coefficients,
    coupling: float,
    t0: Float[Array, ""],
    t1: Float[Array, ""],
    y1: Float[Array, " dim"],
    z1: Float[Array, " dim"],
) -> tuple[Float[Array, " dim"], Float[Array, " dim"]]:
    """The exact inverse (y_{n+1}, z_{n+1}) ↦ (y_n, z_n) of [`reversible_step`][]."""
    h = t1 - t0
    z = z1 + rk_increment(field, coefficients, t1, -h, y1)
    y = (y1 - (1 - coupling) * z - rk_increment(field, coefficients, t0, h, z)) / coupling
    return y, jnp.asarray(z)
