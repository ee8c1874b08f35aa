"""The reversible sweep: backpropagation through a reversible Runge–Kutta scheme."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..integrators import (
    ReversibleRK,
    linearise_stages,
    stages_parameter_vjp,
    tableau_coefficients,
)


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
