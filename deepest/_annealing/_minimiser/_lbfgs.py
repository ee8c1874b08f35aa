"""The default minimiser of each β in [`deepest.anneal`][]: L-BFGS in compact form, many
lanes at once (`_compact.py`), preconditioned where the problem has banded residuals."""

import dataclasses
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.flatten_util import ravel_pytree

from ._base import AbstractMinimiser, action_errors, flat_bounds
from ._compact import CompactLBFGS, Schedule, TridiagonalPreconditioner


def _action_fn(problem, unflatten):
    def fn(y, rf):
        u = unflatten(problem, y)
        return problem.action(u, rf), action_errors(problem, u)

    return fn


class LBFGS(AbstractMinimiser):
    """Limited-memory BFGS on the action, the default.

    Works for every problem. Its directions come from the compact representation of the
    inverse Hessian (Byrd, Nocedal & Schnabel 1994), built for many lanes at once, with a
    weak-Wolfe line search that runs across steps (one step, one evaluation): see
    [`deepest.minimisers.CompactLBFGS`][].

    With a box on the unknowns (`problem.bounds()`) the steps are projected onto it, with
    an active set, as in L-BFGS-B: an unknown at a bound whose gradient pushes out of the
    box is held there, the direction of the others is the quasi-Newton one restricted to
    them, and the line search asks for Armijo's decrease along the projected path. Every
    iterate lies in the box, and the gradient reported to the annealing loop is the
    projected one, zero at a KKT point of the box. This holds with or without the
    preconditioner and with `carry_curvature`.

    **Arguments:**

    - `history_length`: the number m of (step, gradient change) pairs kept (≥ 1).
    - `memory_dtype`: the dtype the pairs are stored in (default float32: half the memory
      traffic, the same minima: BENCHMARKS.md). Iterates, gradients and the small m × m
      matrices keep the run's dtype.
    - `precondition`: for problems with banded residuals (an
      [`deepest.AbstractBandedProblem`][], e.g. [`deepest.Assimilation`][]),
      work in variables z = Lᵀx with LLᵀ the per-component tridiagonal part of the
      action's Gauss–Newton matrix at each β (the measurement term's plus R_f times the
      model term's, from one path's initial point; see `TridiagonalPreconditioner`).
      Ignored for other problems.
    - `carry_curvature`: keep the pairs across β, rebuilt for the new R_f as
      y = y_m + (R_f'/R_f)·y_f from the gradients of the two terms (one extra reverse pass
      per step), instead of starting each β without curvature. Costs a Gram matrix of the
      memories per step and turns the preconditioner off; measured in BENCHMARKS.md.
    - `max_trials`: the trial points the line search may reject in a row before it gives
      up at a β (stop reason `stalled`, or converged if what it expected to gain was
      below `ftol`; ≥ 1).
    """

    history_length: int = eqx.field(default=10, static=True)
    memory_dtype: str | None = eqx.field(default="float32", static=True)
    precondition: bool = eqx.field(default=True, static=True)
    carry_curvature: bool = eqx.field(default=False, static=True)
    max_trials: int = eqx.field(default=20, static=True)
    # Not a field: the switch to the optax two-loop solver of earlier versions, now the
    # benchmarks' `OptaxLBFGS` (benchmarks/optax_lbfgs.py).
    compact: dataclasses.InitVar[bool | None] = None

    def __post_init__(self, compact):
        if compact is False:
            raise ValueError(
                "LBFGS(compact=False), the optax two-loop L-BFGS of earlier versions, is no "
                "longer part of deepest: it is a baseline of the benchmarks "
                "(`OptaxLBFGS` in benchmarks/optax_lbfgs.py). Use deepest.LBFGS()."
            )
        if compact is not None:
            warnings.warn(
                "`LBFGS(compact=...)` is deprecated: the compact form is the only one. "
                "Drop the argument.",
                DeprecationWarning,
                stacklevel=5,  # the caller of LBFGS(...), past equinox's __init__
            )

    def __check_init__(self):
        for name in ("history_length", "max_trials"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value}.")
        if self.memory_dtype is not None and not jnp.issubdtype(self.memory_dtype, jnp.floating):
            raise ValueError(
                f"`memory_dtype` must be a floating-point dtype; got {self.memory_dtype!r}."
            )

    def _preconditioned(self, problem):
        return self.precondition and not self.carry_curvature and problem.banded_shape is not None

    def flatten(self, problem, unknowns):
        if self._preconditioned(problem):  # the banded layout: [states (N, d), params]
            states, params = problem.to_banded(unknowns)
            return jnp.concatenate([states.reshape(-1), params])
        return ravel_pytree(unknowns)[0]

    def unflatten(self, problem, y):
        if self._preconditioned(problem):
            n, d, _ = problem.banded_shape
            return problem.from_banded(y[: n * d].reshape(n, d), y[n * d :])
        template = jax.eval_shape(problem.init, jax.random.key(0))
        zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, y.dtype), template)
        return ravel_pytree(zeros)[1](y)

    def _solver(self, dtype):
        memory = jnp.dtype(dtype if self.memory_dtype is None else self.memory_dtype)
        # Never store pairs more precisely than the iterates.
        if jnp.finfo(memory).bits > jnp.finfo(dtype).bits:
            memory = jnp.dtype(dtype)
        return CompactLBFGS(
            self.history_length, memory, self.carry_curvature, max_trials=self.max_trials
        )

    def prepare(self, problem, y0, rf_table, factors):
        precond = None
        if self._preconditioned(problem):
            precond = TridiagonalPreconditioner.build(
                problem, self.unflatten(problem, y0[0]), rf_table[0], factors
            )
        # the box in the flat layout; None (the program of an unbounded problem) without one
        return Schedule(factors, precond, flat_bounds(self, problem, y0.dtype))

    def init(self, problem, y, rf0, shared):
        f_struct, errors_struct = jax.eval_shape(_action_fn(problem, self.unflatten), y, rf0)
        return self._solver(y.dtype).init(y, f_struct, errors_struct)

    def step(self, problem, y, rf, beta, loop_step, state, shared):
        fn = _action_fn(problem, self.unflatten)
        return self._solver(y.dtype).step(fn, y, rf, beta, loop_step, state, shared)

    def restart(self, problem, done, y, rf, beta, state, shared):
        return self._solver(y.dtype).restart(done, state)
