"""The flow of the canonical equations over one segment, with a diffrax solver."""

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import jax.tree_util as jtu


def with_stage_loop(solver: diffrax.AbstractSolver, forward_only: bool):
    """A Runge–Kutta solver whose stage loop supports the autodiff modes needed.

    Newton's iterations need forward mode only, where a plain `lax` loop is faster; the
    implicit-function correction and the dense output need reverse mode too (`bounded`).
    """
    if isinstance(solver, diffrax.AbstractRungeKutta) and solver.scan_kind is None:
        return dataclasses.replace(solver, scan_kind="lax" if forward_only else "bounded")
    return solver


def fixed_flow(solver, term, ta, tb, y, args, steps):
    """`steps` equal steps of a diffrax solver from ta to tb; returns all step states.

    Driven by `lax.scan` over `solver.step` so that forward- and reverse-mode derivatives
    (Newton's Jacobian and the implicit-function gradient) both go through. A failed step
    (an implicit stage whose Newton solve failed) turns the state into NaN, which the outer
    Newton then reports instead of returning garbage.
    """
    h = (tb - ta) / steps
    state = solver.init(term, ta, ta + h, y, args)

    def body(carry, i):
        y, state = carry
        t0 = ta + i * h
        t1 = jnp.where(i == steps - 1, tb, t0 + h)
        y1, _, _, state, result = solver.step(term, t0, t1, y, args, state, made_jump=False)
        ok = result == diffrax.RESULTS.successful
        y1 = jtu.tree_map(lambda a: jnp.where(ok, a, jnp.nan), y1)
        return (y1, state), y1

    _, ys = jax.lax.scan(body, (y, state), jnp.arange(steps, dtype=h.dtype))
    return jtu.tree_map(lambda a, b: jnp.concatenate([a[None], b]), y, ys)


def adaptive_flow(solver, controller, max_steps, term, ta, tb, y, args, n_save):
    """An adaptive diffrax solve from ta to tb, saved at `n_save + 1` equally spaced times.

    `DirectAdjoint` supports both forward and reverse mode (dense output, gradients).
    """
    ts = ta + (tb - ta) * jnp.linspace(0, 1, n_save + 1, dtype=jnp.result_type(ta))
    sol = diffrax.diffeqsolve(
        term,
        solver,
        ta,
        tb,
        (tb - ta) / n_save,
        y,
        args,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=controller,
        adjoint=diffrax.DirectAdjoint(),
        max_steps=max_steps,
        throw=False,
    )
    ok = sol.result == diffrax.RESULTS.successful
    return jtu.tree_map(lambda a: jnp.where(ok, a, jnp.nan), sol.ys)


def adaptive_end(solver, controller, max_steps, term, ta, tb, y, steps, forward_only):
    """The end state of an adaptive diffrax solve from ta to tb (NaN if it failed), with
    forward-mode derivatives only (`ForwardMode`, cheaper) or both modes."""
    sol = diffrax.diffeqsolve(
        term,
        solver,
        ta,
        tb,
        (tb - ta) / steps,
        y,
        stepsize_controller=controller,
        adjoint=diffrax.ForwardMode() if forward_only else diffrax.DirectAdjoint(),
        max_steps=max_steps,
        throw=False,
    )
    ok = sol.result == diffrax.RESULTS.successful
    return jtu.tree_map(lambda a: jnp.where(ok, a[-1], jnp.nan), sol.ys)
