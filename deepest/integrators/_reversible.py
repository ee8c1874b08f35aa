"""The reversible Runge--Kutta scheme of McCallum & Foster (2024), as a diffrax solver."""

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._tableaux import ClassicalRK4, rk_increment, tableau_coefficients


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

    **Choosing the coupling.** Linear analysis on x' = σx (R the base scheme's stability
    function): a step has eigenvalues ≈ R(hσ) (the solution) and ≈ λ/R(hσ) (a spurious
    mode; their product is λ). Two requirements pull λ in opposite directions:

    - forward stability: the spurious mode must not grow, λ ≤ |R(hσ)| ≈ e^{h Re σ} on
        the most contracting mode of the field (on y' = −y at h = 0.1, λ ≤ 0.905;
        reversible Heun, λ = 1, overflows there);
    - backward accuracy: the rebuild runs the inverse map, whose spurious eigenvalue
        R(hσ)/λ amplifies rounding by about 1/λ per step on slowly varying modes. A
        fixed λ gives λ^{−n} after n steps: with λ = 0.999 the gradient of a smooth
        neural ODE is at rounding after 10³ steps, 3e-10 after 10⁴ and wrong after 10⁵
        (1.001^{10⁵} ≈ e^{100}).

    The default ties λ to the step size instead, λ_n = exp(−κ h_n) with a coupling
    *rate* κ per unit time (`coupling_rate`, default 1). Over a horizon T the rebuild
    then amplifies rounding along the spurious mode by Π 1/λ_n = e^{κT} however many
    steps are taken (λ^{−n} = e^{κT} with n = T/h), and on a mode contracting at rate
    r = −Re σ > 0 the spurious eigenvalue is ≈ e^{(r − κ)h}:

    - κ ≥ r: the spurious mode does not grow forward (absolute error bounded);
    - κ > 2r: it decays faster than the solution itself, so the relative error stays at
        the base scheme's (on y' = −y at h = 0.1 over 10⁵ steps: κ = 3, or a fixed
        λ = 0.5, i.e. κ ≈ 6.9; at κ = 1 the error stays ≈ 3e-7 absolute but swamps the
        decayed solution);
    - backward, the same mode is rebuilt at e^{(κ − r)h} per step and neutral modes at
        e^{κh}: the larger κ, the larger the amplification e^{κT}.

    So take κ from the field and horizon: κ = 1 for a smooth field on T ≈ 1 (rounding
    amplified by e); κ ≈ r_max (or 2 r_max) for a dissipative field with strongest
    contraction rate r_max. Where e^{r_max T} approaches 1/ε (the field's own backward
    expansion; Lorenz-63 has r_max ≈ 15–23, so beyond T ≈ 1), no exact reversal, this
    one included, can rebuild the states: use `adjoint="costate"` there. A fixed
    `coupling` λ per step (as in McCallum & Foster) is also accepted.

    z is carried as diffrax's solver state. Fixed steps only (no error estimate).

    ??? cite "Reference"

        S. McCallum and J. Foster, "Efficient, Accurate and Stable Gradients for Neural
        ODEs", arXiv:2410.11648 (2024).

    **Arguments:**

    - `base`: the explicit base solver (`deepest.integrators.ClassicalRK4`, `diffrax.Heun`,
        `diffrax.Dopri5`, ...); default RK4.
    - `coupling`: a fixed λ ∈ (0, 1] for every step; give this or `coupling_rate`.
    - `coupling_rate`: κ ≥ 0, so that λ_n = exp(−κ |h_n|); default 1 when `coupling` is
        not given (amplification e^{T} over a horizon T).

    **Example:**

    ```python
    solver = deepest.integrators.ReversibleRK(diffrax.Heun(), coupling_rate=1.0)
    sol = diffrax.diffeqsolve(term, solver, 0.0, 10.0, 0.1, y0)
    ```
    """

    base: diffrax.AbstractSolver = ClassicalRK4()
    coupling: float | None = eqx.field(static=True, default=None)
    coupling_rate: float | None = eqx.field(static=True, default=None)

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = (
        diffrax.LocalLinearInterpolation
    )

    def __check_init__(self):
        if self.coupling is not None and self.coupling_rate is not None:
            raise ValueError(
                "Give either a fixed `coupling` λ or a `coupling_rate` κ "
                "(λ = exp(−κ h) per step), not both."
            )
        if self.coupling is not None and not 0.0 < self.coupling <= 1.0:
            raise ValueError(
                f"The coupling parameter must lie in (0, 1]; got {self.coupling}. "
                "Or pass `coupling_rate` κ ≥ 0 to tie it to the step size, "
                "λ = exp(−κ h)."
            )
        if self.coupling_rate is not None and not 0.0 <= self.coupling_rate < float("inf"):
            raise ValueError(
                f"The coupling rate must be finite and ≥ 0 (per unit time); got "
                f"{self.coupling_rate}. Set it to the field's strongest contraction rate."
            )
        tableau_coefficients(self.base)  # raises TypeError for a non-explicit-RK base

    def step_coupling(self, h: Float[Array, ""]) -> float | Float[Array, ""]:
        """The coupling λ of a step of size `h`: the fixed `coupling`, or exp(−κ |h|)."""
        if self.coupling is not None:
            return self.coupling
        rate = 1.0 if self.coupling_rate is None else self.coupling_rate
        return jnp.exp(-rate * jnp.abs(h))

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
            self.step_coupling(t1 - t0),
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
    coupling: float | Float[Array, ""],
    t0: Float[Array, ""],
    t1: Float[Array, ""],
    y: Float[Array, " dim"],
    z: Float[Array, " dim"],
) -> tuple[Float[Array, " dim"], Float[Array, " dim"]]:
    """One forward step (y_n, z_n) ↦ (y_{n+1}, z_{n+1}) of [`ReversibleRK`][] with coupling λ."""
    h = t1 - t0
    coupling = jnp.asarray(coupling, dtype=y.dtype)
    y1 = coupling * y + (1 - coupling) * z + rk_increment(field, coefficients, t0, h, z)
    z1 = z - rk_increment(field, coefficients, t1, -h, y1)
    return y1, z1


def reversible_step_back(
    field: Callable,
    coefficients,
    coupling: float | Float[Array, ""],
    t0: Float[Array, ""],
    t1: Float[Array, ""],
    y1: Float[Array, " dim"],
    z1: Float[Array, " dim"],
) -> tuple[Float[Array, " dim"], Float[Array, " dim"]]:
    """The exact inverse (y_{n+1}, z_{n+1}) ↦ (y_n, z_n) of [`reversible_step`][]."""
    h = t1 - t0
    coupling = jnp.asarray(coupling, dtype=y1.dtype)
    z = z1 + rk_increment(field, coefficients, t1, -h, y1)
    y = (y1 - (1 - coupling) * z - rk_increment(field, coefficients, t0, h, z)) / coupling
    return y, jnp.asarray(z)
