"""Explicit Runge--Kutta tableaux and the symplectic partner sweep for the costate.

The forward scheme with tableau (a, b, c) advances x' = F(t, x) by

    X_i = x_n + h Σ_{j<i} a_ij F(t_n + c_j h, X_j),   x_{n+1} = x_n + h Σ_i b_i F(t_n + c_i h, X_i).

Its symplectic partitioned partner (Sanz-Serna 2016, SIAM Review 58(1)) advances the
backprop costate λ so that λ_n = (∂x_{n+1}/∂x_n)ᵀ λ_{n+1} exactly: the discrete costate
sweep *is* reverse-mode differentiation of the forward steps, with memory for the step
states only. The sweep is written in the division-free form, valid with zero weights
(Dopri5 and Tsit5 have b_i = 0 on their FSAL stage):

    K̄_i = h (b_i λ_{n+1} + Σ_{j>i} a_ji Λ_j),   Λ_i = J_iᵀ K̄_i,   λ_n = λ_{n+1} + Σ_i Λ_i,

with J_i = ∂F/∂x(X_i); the parameter gradient accumulates Σ_i (∂F/∂θ(X_i))ᵀ K̄_i. Only
vector-Jacobian products of the vector field at single stages are taken, never of a whole
solver step.
"""

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

_rk4_tableau = diffrax.ButcherTableau(
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    # Classical RK4 has no embedded method; a zero error estimate is what diffrax's
    # ButcherTableau needs to be well formed. `ContinuousNetwork` refuses adaptive
    # stepping with RK4 for this reason.
    b_error=np.zeros(4),
    c=np.array([0.5, 0.5, 1.0]),
)


class ClassicalRK4(diffrax.AbstractERK):
    """The classical fourth-order Runge--Kutta method, as a diffrax solver.

    Diffrax ships no classical RK4; this gives it its Butcher tableau

        0   |
        1/2 | 1/2
        1/2 | 0    1/2
        1   | 0    0    1
        ----+-------------------
            | 1/6  1/3  1/3  1/6

    for fixed-step use (`diffrax.StepConstantSize`, `diffrax.StepTo`). It has no embedded
    error estimate, so it is not meant for adaptive step-size control.

    **Arguments:** None.

    **Example:**

    ```python
    sol = diffrax.diffeqsolve(term, deepest.integrators.ClassicalRK4(), 0.0, 1.0, 0.1, y0)
    ```
    """

    tableau: ClassVar[diffrax.ButcherTableau] = _rk4_tableau
    interpolation_cls: ClassVar[Callable[..., diffrax.ThirdOrderHermitePolynomialInterpolation]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def order(self, terms):
        del terms
        return 4


def tableau_coefficients(
    method: diffrax.AbstractSolver | diffrax.ButcherTableau,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full coefficient arrays (a, b, c) of an explicit Runge--Kutta method.

    Taken from diffrax's own solvers: `diffrax.Euler` (a = [[0]], b = [1], c = [0]), any
    explicit `diffrax.AbstractERK` (`Heun`, `Midpoint`, `Ralston`, `Bosh3`, `Dopri5`,
    `Tsit5`, `Dopri8`, and `deepest.integrators.ClassicalRK4`), or a `diffrax.ButcherTableau`.

    **Arguments:**

    - `method`: a diffrax solver instance or an explicit Butcher tableau.

    **Returns:**

    `(a, b, c)`: numpy arrays of shapes (s, s) (strictly lower triangular), (s,), (s,).

    **Example:**

    ```python
    a, b, c = tableau_coefficients(diffrax.Dopri5())  # b[1] == b[6] == 0
    ```
    """
    if isinstance(method, diffrax.Euler):
        return np.zeros((1, 1)), np.ones(1), np.zeros(1)
    if isinstance(method, diffrax.AbstractERK):
        tableau = method.tableau
    elif isinstance(method, diffrax.ButcherTableau):
        tableau = method
    else:
        raise TypeError(
            f"Expected diffrax.Euler, an explicit diffrax Runge-Kutta solver "
            f"(diffrax.AbstractERK, e.g. diffrax.Heun, diffrax.Dopri5, "
            f"deepest.integrators.ClassicalRK4) or a diffrax.ButcherTableau; got {method!r}."
        )
    if tableau.implicit:
        raise ValueError(
            "The partner sweep needs an explicit Runge-Kutta tableau; this one has a "
            "nonzero diagonal (an implicit method)."
        )
    s = tableau.num_stages
    a = np.zeros((s, s))
    for i, row in enumerate(tableau.a_lower):
        a[i + 1, : i + 1] = row
    b = np.asarray(tableau.b_sol, dtype=np.float64)
    c = np.concatenate([[tableau.c1], tableau.c]).astype(np.float64)
    return a, b, c


def partner_tableau(
    method: diffrax.AbstractSolver | diffrax.ButcherTableau,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The symplectic partitioned partner of an explicit Runge--Kutta tableau.

    For a forward tableau (a, b, c) with every b_i ≠ 0, the costate is advanced with
    (Sanz-Serna 2016, eq. 3.5)

        ā_ij = b_j − b_j a_ji / b_i,    b̄_i = b_i,    c̄_i = c_i,

    so that b_i ā_ij + b_j a_ji = b_i b_j: the pair is a symplectic partitioned RK method
    for H = λ·F(x). With a zero weight the formula divides by zero; `partner_step` and
    `partner_sweep` use the division-free form instead, which holds in general.

    **Arguments:**

    - `method`: as for [`deepest.integrators.tableau_coefficients`][].

    **Returns:**

    `(ā, b̄, c̄)` as numpy arrays.

    **Raises:**

    `ValueError` if some b_i = 0 (e.g. Dopri5, Tsit5).
    """
    a, b, c = tableau_coefficients(method)
    if np.any(b == 0):
        raise ValueError(
            f"The partner tableau divides by the weights b = {b}, and some are zero. "
            "Use `partner_step`/`partner_sweep`, whose division-free form handles zero "
            "weights."
        )
    a_bar = b[None, :] - b[None, :] * a.T / b[:, None]
    return a_bar, b.copy(), c.copy()


def _needed_stages(a: np.ndarray, b: np.ndarray) -> list[bool]:
    # A stage whose weight is zero and which feeds no needed later stage (Dopri5's and
    # Tsit5's FSAL stage) changes neither x_{n+1} nor the costate: skip it.
    s = len(b)
    needed = [False] * s
    for i in reversed(range(s)):
        needed[i] = bool(b[i] != 0) or any(needed[j] and a[j, i] != 0 for j in range(i + 1, s))
    return needed


def _stage_input(x, h, a_row, ks):
    increment = None
    for a_ij, k_j in zip(a_row, ks, strict=True):
        if a_ij != 0 and k_j is not None:
            term = a_ij * k_j
            increment = term if increment is None else increment + term
    return x if increment is None else x + h * increment


def rk_increment(
    field: Callable,
    coefficients: tuple[np.ndarray, np.ndarray, np.ndarray],
    t0: Float[Array, ""],
    h: Float[Array, ""],
    x: Float[Array, " dim"],
) -> Float[Array, " dim"]:
    """The increment Ψ_h(t_0, x) = h Σ_i b_i F(t_0 + c_i h, X_i) of one explicit RK step.

    `h` may be negative (a step backward in time, as the reversible scheme needs).

    **Arguments:**

    - `field`: the vector field, called as `field(t, x)`.
    - `coefficients`: `(a, b, c)` from [`deepest.integrators.tableau_coefficients`][].
    - `t0`, `h`: the step's start time and size.
    - `x`: the state at `t0`.

    **Returns:**

    The increment x_{n+1} − x_n.
    """
    a, b, c = coefficients
    ks: list = [None] * len(b)
    for i, needed in enumerate(_needed_stages(a, b)):
        if needed:
            ks[i] = field(t0 + c[i] * h, _stage_input(x, h, a[i, :i], ks[:i]))
    return h * _stage_input(jnp.zeros_like(x), 1.0, b, ks)


def _tree_add(u, v):
    return jax.tree.map(lambda p, q: p + q, u, v)


def _stage_weight(a, b, i, cotangent, stage_costates):
    # K̄_i / h = b_i v + Σ_{j>i} a_ji Λ_j, the partner scheme's division-free stage weight.
    k_bar = b[i] * cotangent if b[i] != 0 else jnp.zeros_like(cotangent)
    for j in range(i + 1, len(b)):
        if a[j, i] != 0 and stage_costates[j] is not None:
            k_bar = k_bar + a[j, i] * stage_costates[j]
    return k_bar


def _linearised_stages(vjp_at, coefficients, t0, h, x):
    # One RK increment Ψ_h(t_0, x) and its needed stages (i, t_i, X_i, VJP_i), each stage
    # value and VJP from `vjp_at(t_i, X_i)`.
    a, b, c = coefficients
    ks: list = [None] * len(b)
    stages: list = []
    for i, needed in enumerate(_needed_stages(a, b)):
        if needed:
            t_i = t0 + c[i] * h
            x_i = _stage_input(x, h, a[i, :i], ks[:i])
            ks[i], vjp_i = vjp_at(t_i, x_i)
            stages.append((i, t_i, x_i, vjp_i))
    return h * _stage_input(jnp.zeros_like(x), 1.0, b, ks), stages


def _transposed_stages(coefficients, h, stages, cotangent, costate):
    # The partner scheme's backward sweep over the stages, last first: yields each stage's
    # (t_i, X_i, K̄_i, VJP_i(K̄_i)), with Λ_i = `costate(VJP_i(K̄_i))`.
    a, b, _ = coefficients
    stage_costates: list = [None] * len(b)
    for i, t_i, x_i, vjp_i in reversed(stages):
        k_bar = h * _stage_weight(a, b, i, cotangent, stage_costates)
        out = vjp_i(k_bar)
        stage_costates[i] = costate(out)
        yield t_i, x_i, k_bar, out


def linearise_increment(
    field: Callable,
    coefficients: tuple[np.ndarray, np.ndarray, np.ndarray],
    t0: Float[Array, ""],
    h: Float[Array, ""],
    x: Float[Array, " dim"],
) -> tuple[Float[Array, " dim"], Callable]:
    """One RK increment Ψ_h(t_0, x) and its transpose, by the division-free partner form.

    The stages X_i are computed from `x`, each with one `eqx.filter_vjp` of
    `field(t_i, ·)` (never a VJP of the whole step). The transpose maps a cotangent v to
    K̄_i = h (b_i v + Σ_{j>i} a_ji Λ_j), Λ_i = J_iᵀ K̄_i (J_i = ∂F/∂x(X_i)), and returns
    (Σ_i Λ_i, Σ_i (∂F/∂θ(X_i))ᵀ K̄_i) = ((∂Ψ_h/∂x)ᵀ v, (∂Ψ_h/∂θ)ᵀ v).

    **Arguments:** as for [`deepest.integrators.rk_increment`][]. `field` must be an
    Equinox module (its inexact arrays are the parameters θ).

    **Returns:**

    `(Ψ_h(t_0, x), transpose)`, with `transpose(v) = (Σ_i Λ_i, field_grad)` and
    `field_grad` shaped like `eqx.filter(field, eqx.is_inexact_array)`.
    """
    increment, stages = _linearised_stages(
        lambda t_i, x_i: eqx.filter_vjp(lambda f, y: f(t_i, y), field, x_i), coefficients, t0, h, x
    )

    def transpose(cotangent):
        total = jnp.zeros_like(x)
        field_grad = None
        for *_, (grad_i, costate_i) in _transposed_stages(
            coefficients, h, stages, cotangent, lambda out: out[1]
        ):
            total = total + costate_i
            field_grad = grad_i if field_grad is None else _tree_add(field_grad, grad_i)
        return total, eqx.filter(field_grad, eqx.is_inexact_array)

    return increment, transpose


def linearise_stages(field, coefficients, t0, h, x):
    """One RK increment Ψ_h(t_0, x) and the transpose of its dependence on x alone: the
    stages are linearised in x only (no parameter cotangents per stage). The transpose
    also returns each stage's time, input and cotangent K̄_i, so that the parameter
    gradient of many stages can be taken in one batched VJP
    ([`deepest.integrators.stages_parameter_vjp`][]).

    **Returns:** `(Ψ_h(t_0, x), transpose)`, with
    `transpose(v) = ((∂Ψ_h/∂x)ᵀ v, times, inputs, k_bars)`.
    """
    increment, stages = _linearised_stages(
        lambda t_i, x_i: jax.vjp(lambda y: field(t_i, y), x_i), coefficients, t0, h, x
    )

    def transpose(cotangent):
        total = jnp.zeros_like(x)
        times, inputs, k_bars = [], [], []
        for t_i, x_i, k_bar, (costate_i,) in _transposed_stages(
            coefficients, h, stages, cotangent, lambda out: out[0]
        ):
            total = total + costate_i
            times.append(t_i)
            inputs.append(x_i)
            k_bars.append(k_bar)
        return total, times, inputs, k_bars

    return increment, transpose


def stages_parameter_vjp(params, static, times, inputs, k_bars):
    """Σ_i (∂F/∂θ(t_i, X_i))ᵀ K̄_i as one VJP of the field `eqx.combine(params, static)`
    vmapped over the stages (`times`, `inputs`, `k_bars` as returned by the transpose of
    [`deepest.integrators.linearise_stages`][]). It evaluates the stages once more,
    batched, but for dense layers the sum of per-stage outer products becomes one matrix
    product, and the parameter cotangents are accumulated once per step instead of once
    per stage (the reversible step has two increments' worth of stages).
    """

    def stage_values(p):
        field = eqx.combine(p, static)
        return jax.vmap(field)(jnp.stack(times), jnp.stack(inputs))

    _, vjp = jax.vjp(stage_values, params)
    (grad,) = vjp(jnp.stack(k_bars))
    return grad


def partner_step(
    field: Callable,
    coefficients: tuple[np.ndarray, np.ndarray, np.ndarray],
    t0: Float[Array, ""],
    h: Float[Array, ""],
    x: Float[Array, " dim"],
    costate: Float[Array, " dim"],
) -> tuple[Float[Array, " dim"], PyTree]:
    """One backward step of the partner costate sweep: λ_{n+1} ↦ λ_n.

    λ_n = λ_{n+1} + Σ_i Λ_i = (∂x_{n+1}/∂x_n)ᵀ λ_{n+1}, and the step's parameter gradient
    Σ_i (∂F/∂θ(X_i))ᵀ K̄_i; see [`deepest.integrators.linearise_increment`][].

    **Arguments:**

    - `field`, `coefficients`, `t0`, `h`: as for [`deepest.integrators.rk_increment`][].
    - `x`: the forward state x_n at `t0` (the stages are recomputed from it).
    - `costate`: λ_{n+1}.

    **Returns:**

    `(λ_n, field_grad)`.
    """
    _, transpose = linearise_increment(field, coefficients, t0, h, x)
    increment, field_grad = transpose(costate)
    return costate + increment, field_grad


def partner_sweep(
    field: Callable,
    coefficients: tuple[np.ndarray, np.ndarray, np.ndarray],
    ts: Float[Array, " n_times"],
    xs: Float[Array, "n_times dim"],
    costate_final: Float[Array, " dim"],
) -> tuple[Float[Array, "n_times dim"], PyTree]:
    """The exact discrete costate sweep of an explicit RK forward pass.

    Given the stored step states x_n at times t_n (n = 0..N) of a forward solve with
    tableau (a, b, c) and λ_N = ∂C/∂x(t_N), sweeps λ backward with the division-free
    partner of the forward scheme (Sanz-Serna 2016):

        K̄_i = h_n (b_i λ_{n+1} + Σ_{j>i} a_ji Λ_j),  Λ_i = J_iᵀ K̄_i,  λ_n = λ_{n+1} + Σ_i Λ_i,

    and accumulates dC/dθ = Σ_n Σ_i (∂F/∂θ(X_i))ᵀ K̄_i. The result equals reverse-mode
    differentiation of the forward steps to rounding, while only the step states are
    stored (stages are recomputed). Sign convention: λ is the backprop costate; the
    action's canonical momentum is p = −λ.

    Times after the last finite one (the `inf` padding of
    `diffrax.SaveAt(steps=True)` after an adaptive solve) are skipped: such steps have
    h = 0 and leave λ unchanged, so their rows repeat the costate at the last
    accepted time. The step times themselves are treated as fixed (not differentiated).

    **Arguments:**

    - `field`: an Equinox module called as `field(t, x)`; its inexact arrays are θ.
    - `coefficients`: `(a, b, c)` from [`deepest.integrators.tableau_coefficients`][].
    - `ts`: step times t_0 < t_1 < ... (non-finite padding allowed at the end).
    - `xs`: the states at `ts`, shape (len(ts), dim).
    - `costate_final`: λ at the last finite time, ∂C/∂x(t_N).

    **Returns:**

    `(costates, field_grad)`: λ_n at every row of `ts`, and dC/dθ shaped like
    `eqx.filter(field, eqx.is_inexact_array)`.

    **Example:**

    ```python
    sol = diffrax.diffeqsolve(term, solver, 0.0, 1.0, 0.01, x0,
                              saveat=diffrax.SaveAt(t0=True, steps=True))
    costates, grad = partner_sweep(field, tableau_coefficients(solver),
                                   sol.ts, sol.ys, dC_dxT)
    ```
    """
    ts = jnp.asarray(ts)
    valid = jnp.isfinite(ts[1:])
    steps = jnp.where(valid, ts[1:] - ts[:-1], 0.0)
    steps = eqx.error_if(
        steps, jnp.any(steps < 0), "Step times must increase (a step size was < 0)."
    )
    starts = jnp.where(valid, ts[:-1], 0.0)
    states = jnp.where(valid[:, None], xs[:-1], 0.0)
    params, static = eqx.partition(field, eqx.is_inexact_array)

    def body(carry, step):
        costate, grad = carry
        t0, h, x = step
        costate, step_grad = partner_step(
            eqx.combine(params, static), coefficients, t0, h, x, costate
        )
        return (costate, _tree_add(grad, step_grad)), costate

    zero = jax.tree.map(jnp.zeros_like, params)
    (_, grad), costates = jax.lax.scan(
        body, (costate_final, zero), (starts, steps, states), reverse=True
    )
    return jnp.concatenate([costates, costate_final[None]]), grad
