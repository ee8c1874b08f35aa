"""Gradients of continuous layers: the exact partner costate sweep and the reversible sweep.

Three ways to differentiate one forward solve x(t_0) ↦ x(t_1) of dx/dt = F(t, x; θ):

- `solve_autodiff`: JAX differentiates through diffrax's steps
  (`diffrax.RecursiveCheckpointAdjoint`); the reference.
- `solve_costate`: the forward solve stores the step states only; the backward pass is
  the division-free symplectic partner sweep of the forward tableau
  ([`deepest.integrators.partner_sweep`][]), exactly the gradient of the discrete forward
  pass, exposed through `jax.custom_vjp`. With an adaptive step-size controller the
  accepted step times are recorded (buffer of `max_steps`) and replayed.
- `solve_reversible`: the forward scheme is [`deepest.integrators.ReversibleRK`][]; the
  backward pass rebuilds each state from the last one by the exact inverse step, so its
  memory does not depend on the number of steps.

Step times are not differentiated in any mode. For adaptive solves this is also what
diffrax does: its `PIDController` stops gradients through the step-size choice, so the
`autodiff` reference treats the accepted step times as fixed, as the replay does.
"""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ..integrators._reversible import ReversibleRK
from ..integrators._tableaux import (
    linearise_stages,
    partner_sweep,
    stages_parameter_vjp,
    tableau_coefficients,
)


class Integration(eqx.Module):
    """How one time segment is integrated: solver, steps and step-size control.

    **Arguments:**

    - `solver`: a diffrax solver; an explicit RK method for the costate sweep, a
        [`deepest.integrators.ReversibleRK`][] for the reversible one.
    - `n_steps`: the number of steps (fixed stepping), or the initial step t_span/n_steps
        of an adaptive solve.
    - `stepsize_controller`: `None` for fixed steps, else a diffrax controller.
    - `max_steps`: size of the step buffer of an adaptive solve.
    """

    solver: diffrax.AbstractSolver = eqx.field(static=True)
    n_steps: int = eqx.field(static=True)
    stepsize_controller: diffrax.AbstractStepSizeController | None = eqx.field(
        static=True, default=None
    )
    max_steps: int | None = eqx.field(static=True, default=None)

    @property
    def buffer_size(self) -> int:
        return self.n_steps if self.max_steps is None else self.max_steps


def _vector_field(t, x, field):
    return field(t, x)


_TERM = diffrax.ODETerm(_vector_field)


def _diffeqsolve(field, x0, t0, t1, integration, saveat, adjoint=None):
    controller = integration.stepsize_controller
    return diffrax.diffeqsolve(
        _TERM,
        integration.solver,
        t0,
        t1,
        (t1 - t0) / integration.n_steps,
        x0,
        args=field,
        saveat=saveat,
        stepsize_controller=diffrax.ConstantStepSize() if controller is None else controller,
        max_steps=integration.buffer_size,
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
    )


def forward_steps(
    field: Callable,
    x0: Float[Array, " dim"],
    t0: Float[Array, ""],
    t1: Float[Array, ""],
    integration: Integration,
) -> tuple[Float[Array, " n"], Float[Array, "n dim"], Float[Array, " dim"]]:
    """The forward solve, storing the state at every accepted step (no stages).

    **Returns:**

    `(ts, xs, x_final)`: times and states from t_0 on (padded with `inf` after the last
    accepted step of an adaptive solve), and the state at t_1.
    """
    sol = _diffeqsolve(field, x0, t0, t1, integration, diffrax.SaveAt(t0=True, steps=True))
    x_final = sol.ys[sol.stats["num_accepted_steps"]]
    return sol.ts, sol.ys, x_final


def solve_autodiff(field, x0, t0, t1, integration):
    """x(t_1), differentiated by JAX through diffrax's steps (the reference)."""
    return _diffeqsolve(field, x0, t0, t1, integration, diffrax.SaveAt(t1=True)).ys[-1]


@eqx.filter_custom_vjp
def _costate_solve(field_and_x0, t0, t1, integration):
    field, x0 = field_and_x0
    return _diffeqsolve(field, x0, t0, t1, integration, diffrax.SaveAt(t1=True)).ys[-1]


@_costate_solve.def_fwd
def _costate_solve_fwd(perturbed, field_and_x0, t0, t1, integration):
    del perturbed
    field, x0 = field_and_x0
    ts, xs, x_final = forward_steps(field, x0, t0, t1, integration)
    return x_final, (ts, xs)


@_costate_solve.def_bwd
def _costate_solve_bwd(residuals, cotangent, perturbed, field_and_x0, t0, t1, integration):
    del perturbed, t0, t1
    ts, xs = residuals
    field, _ = field_and_x0
    coefficients = tableau_coefficients(integration.solver)
    costates, field_grad = partner_sweep(field, coefficients, ts, xs, cotangent)
    return field_grad, costates[0]


def solve_costate(field, x0, t0, t1, integration):
    """x(t_1), differentiated by the partner costate sweep (`jax.custom_vjp`)."""
    return _costate_solve((field, x0), t0, t1, integration)


def reversible_sweep(
    field: Callable,
    solver: ReversibleRK,
    t0: Float[Array, ""],
    t1: Float[Array, ""],
    n_steps: int,
    y_final: Float[Array, " dim"],
    z_final: Float[Array, " dim"],
    cotangent: Float[Array, " dim"],
    return_costates: bool = False,
):
    """Backpropagation through [`deepest.integrators.ReversibleRK`][] at O(1) memory.

    Walks the n_steps equal steps of [t_0, t_1] backward; each step first rebuilds
    (y_n, z_n) from (y_{n+1}, z_{n+1}) by the exact inverse step, then transposes
    y_{n+1} = λ y_n + (1 − λ) z_n + Ψ_h(t_n, z_n) and z_{n+1} = z_n − Ψ_{−h}(t_{n+1}, y_{n+1})
    with the partner form of the base increments (VJPs of the field at single stages).
    The stage evaluations that rebuild the states are the ones whose VJPs transpose
    the step (each stage is evaluated once); the parameter gradient of the step's
    stages is taken in one batched VJP. Only the current pair and its cotangents are
    held.

    **Arguments:**

    - `field`: an Equinox module called as `field(t, x)`.
    - `solver`: the reversible scheme used forward.
    - `t0`, `t1`, `n_steps`: the forward time grid t_n = t_0 + n (t_1 − t_0)/n_steps.
    - `y_final`, `z_final`: the forward pair at t_1.
    - `cotangent`: ∂C/∂y(t_1).
    - `return_costates`: also return ȳ_n + z̄_n at every step (the costate of the
        common initial value y_n = z_n), which costs memory linear in n_steps.

    **Returns:**

    `(dC/dx(t_0), field_grad)`, plus the costates if asked.
    """
    coefficients = tableau_coefficients(solver.base)
    dtype = y_final.dtype
    h = (t1 - t0) / n_steps
    coupling = jnp.asarray(solver.step_coupling(h), dtype=dtype)
    params, static = eqx.partition(field, eqx.is_inexact_array)

    def body(carry, _):
        # The step index is carried, not scanned over, so that nothing of length
        # n_steps is allocated (the memory of the sweep is independent of n_steps).
        index, y1, z1, y1_bar, z1_bar, grad = carry
        index = index - 1
        f = eqx.combine(params, static)
        t_start = t0 + index.astype(dtype) * h
        t_end = t0 + (index + 1).astype(dtype) * h
        back_increment, back_transpose = linearise_stages(f, coefficients, t_end, -h, y1)
        z0 = z1 + back_increment
        forward_increment, forward_transpose = linearise_stages(f, coefficients, t_start, h, z0)
        y0 = (y1 - (1 - coupling) * z0 - forward_increment) / coupling
        dy, back_times, back_inputs, back_k_bars = back_transpose(z1_bar)
        y1_bar = y1_bar - dy
        dz, times, inputs, k_bars = forward_transpose(y1_bar)
        # z_{n+1} = z_n − Ψ_{−h}(y_{n+1}): the backward increment's stages enter with a
        # minus sign.
        step_grad = stages_parameter_vjp(
            params,
            static,
            back_times + times,
            back_inputs + inputs,
            [-k for k in back_k_bars] + k_bars,
        )
        y0_bar = coupling * y1_bar
        z0_bar = z1_bar + (1 - coupling) * y1_bar + dz
        grad = jax.tree.map(jnp.add, grad, step_grad)
        out = y0_bar + z0_bar if return_costates else None
        return (index, y0, z0, y0_bar, z0_bar, grad), out

    zero = jax.tree.map(jnp.zeros_like, params)
    init = (jnp.asarray(n_steps), y_final, z_final, cotangent, jnp.zeros_like(cotangent), zero)
    (_, _, _, y_bar, z_bar, grad), costates = jax.lax.scan(
        body, init, None, length=n_steps, reverse=True
    )
    if return_costates:
        return y_bar + z_bar, grad, jnp.concatenate([costates, cotangent[None]])
    return y_bar + z_bar, grad


def forward_reversible(field, x0, t0, t1, integration):
    """The reversible forward solve, keeping only the final pair (y, z)."""
    sol = _diffeqsolve(field, x0, t0, t1, integration, diffrax.SaveAt(t1=True, solver_state=True))
    return sol.ys[-1], sol.solver_state


@eqx.filter_custom_vjp
def _reversible_solve(field_and_x0, t0, t1, integration):
    field, x0 = field_and_x0
    return _diffeqsolve(field, x0, t0, t1, integration, diffrax.SaveAt(t1=True)).ys[-1]


@_reversible_solve.def_fwd
def _reversible_solve_fwd(perturbed, field_and_x0, t0, t1, integration):
    del perturbed
    field, x0 = field_and_x0
    y_final, z_final = forward_reversible(field, x0, t0, t1, integration)
    return y_final, (y_final, z_final)


@_reversible_solve.def_bwd
def _reversible_solve_bwd(residuals, cotangent, perturbed, field_and_x0, t0, t1, integration):
    del perturbed
    y_final, z_final = residuals
    field, _ = field_and_x0
    x0_bar, field_grad = reversible_sweep(
        field, integration.solver, t0, t1, integration.n_steps, y_final, z_final, cotangent
    )
    return field_grad, x0_bar


def solve_reversible(field, x0, t0, t1, integration):
    """x(t_1) by [`deepest.integrators.ReversibleRK`][], differentiated at O(1) memory."""
    return _reversible_solve((field, x0), t0, t1, integration)


SOLVES: dict[str, Callable] = {
    "autodiff": solve_autodiff,
    "costate": solve_costate,
    "reversible": solve_reversible,
}


def segment_forward(
    field: Callable,
    x0: Float[Array, " dim"],
    t0: Float[Array, ""],
    t1: Float[Array, ""],
    integration: Integration,
) -> tuple[Float[Array, " dim"], tuple[Array, Array]]:
    """Forward solve of one segment, keeping what its costate sweep needs.

    **Returns:**

    `(x(t_1), residuals)`: the step times and states for an RK solver, the final pair
    (y, z) for a [`deepest.integrators.ReversibleRK`][].
    """
    if isinstance(integration.solver, ReversibleRK):
        y_final, z_final = forward_reversible(field, x0, t0, t1, integration)
        return y_final, (y_final, z_final)
    ts, xs, x_final = forward_steps(field, x0, t0, t1, integration)
    return x_final, (ts, xs)


def segment_sweep(
    field: Callable,
    residuals: tuple[Array, Array],
    t0: Float[Array, ""],
    t1: Float[Array, ""],
    integration: Integration,
    costate_final: Float[Array, " dim"],
) -> tuple[Float[Array, "n_times dim"], PyTree]:
    """The costate sweep of one segment from λ(t_1), given `segment_forward`'s residuals.

    **Returns:**

    `(costates, field_grad)`: λ at the segment's step times (first row λ(t_0), last
    row λ(t_1)) and dC/dθ.
    """
    if isinstance(integration.solver, ReversibleRK):
        y_final, z_final = residuals
        _, grad, costates = reversible_sweep(
            field,
            integration.solver,
            t0,
            t1,
            integration.n_steps,
            y_final,
            z_final,
            costate_final,
            return_costates=True,
        )
        return costates, grad
    ts, xs = residuals
    coefficients = tableau_coefficients(integration.solver)
    return partner_sweep(field, coefficients, ts, xs, costate_final)
