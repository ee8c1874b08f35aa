"""The minimiser of each β in [`deepest.anneal`][]: L-BFGS (here and in `_lbfgs.py`), or
Levenberg–Marquardt on the block-banded structure of an action summed over time
(`_levenberg_marquardt.py`).

Each is driven one step at a time (one evaluation of the action per step) by the
annealing loop, one lane per path. A minimiser decides the space the loop works in (a flat
vector), starts a lane (`init`), takes one step and says what happened in a
[`StepInfo`][deepest.minimisers.StepInfo] (`step`), and starts the next β where the loop says
so (`restart`). The loop applies the stopping rule; it never reads a solver's state.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, Int, PyTree

from .._problem import AbstractBandedProblem, AbstractProblem
from ._compact import CompactLBFGS, Schedule, StepInfo, TridiagonalPreconditioner


class AbstractMinimiser(eqx.Module):
    """The minimiser used at each β of [`deepest.anneal`][].

    Subclasses say how a problem's unknowns map to the flat vector the annealing loop
    carries (`flatten`, `unflatten`), what all lanes share (`prepare`), start a lane
    (`init`), step it (`step`, one evaluation of the action) and start its next β
    (`restart`).
    """

    @abc.abstractmethod
    def check(self, problem: AbstractProblem) -> None:
        """Raise `ValueError` if this minimiser cannot solve `problem`."""

    @abc.abstractmethod
    def flatten(self, problem: AbstractProblem, unknowns: PyTree[Array]) -> Float[Array, " n"]:
        """The unknowns of one path as the flat vector the loop carries."""

    @abc.abstractmethod
    def unflatten(self, problem: AbstractProblem, y: Float[Array, " n"]) -> PyTree[Array]:
        """The inverse of `flatten`."""

    def prepare(
        self,
        problem: AbstractProblem,
        y0: Float[Array, "lanes n"],
        rf_table: Array,
        factors: Float[Array, " n_beta"],
    ) -> PyTree:
        """What every lane shares (e.g. a preconditioner), from the initial paths `y0`, the
        schedule's R_f values and their factors α^β over rf0. Default: nothing."""
        return None

    @abc.abstractmethod
    def init(self, problem: AbstractProblem, y: Float[Array, " n"], rf0: Array, shared) -> PyTree:
        """The solver state of one lane starting at `y`, at R_f = `rf0`."""

    @abc.abstractmethod
    def step(
        self,
        problem: AbstractProblem,
        y: Float[Array, " n"],
        rf: Array,
        beta: Int[Array, ""],
        loop_step: Int[Array, ""],
        state: PyTree,
        shared: PyTree,
    ) -> tuple[Float[Array, " n"], PyTree, StepInfo]:
        """One evaluation at R_f = `rf`, the lane's β. **Returns:** the accepted point,
        the new state and a [`StepInfo`][deepest.minimisers.StepInfo]."""

    @abc.abstractmethod
    def restart(
        self,
        problem: AbstractProblem,
        done: Bool[Array, ""],
        y: Float[Array, " n"],
        rf: Array,
        beta: Int[Array, ""],
        state: PyTree,
        shared: PyTree,
    ) -> PyTree:
        """Where `done`, the state that starts β = `beta` (R_f = `rf`) from the point `y`;
        elsewhere `state` unchanged."""


def _errors(problem, u):
    return problem.measurement_error(u), problem.model_error(u)


def _action_fn(problem, unflatten):
    def fn(y, rf):
        u = unflatten(problem, y)
        return problem.action(u, rf), _errors(problem, u)

    return fn


class LBFGS(AbstractMinimiser):
    """Limited-memory BFGS on the action, the default.

    Works for every problem. Its directions come from the compact representation of the
    inverse Hessian (Byrd, Nocedal & Schnabel 1994), built for many lanes at once, with a
    weak-Wolfe line search that runs across steps (one step, one evaluation): see
    [`deepest.minimisers.CompactLBFGS`][].

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
    - `compact`: False takes the directions from optax's two-loop recursion
      (`optax.scale_by_lbfgs`) instead, with a backtracking Armijo search: the solver
      of earlier versions, kept for comparison (it ignores the three options above).
    """

    history_length: int = eqx.field(default=10, static=True)
    memory_dtype: str | None = eqx.field(default="float32", static=True)
    precondition: bool = eqx.field(default=True, static=True)
    carry_curvature: bool = eqx.field(default=False, static=True)
    compact: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        if int(self.history_length) != self.history_length or self.history_length < 1:
            raise ValueError(
                f"`history_length` must be a positive integer; got {self.history_length}."
            )
        if self.memory_dtype is not None and not jnp.issubdtype(self.memory_dtype, jnp.floating):
            raise ValueError(
                f"`memory_dtype` must be a floating-point dtype; got {self.memory_dtype!r}."
            )

    def check(self, problem):
        pass

    def _preconditioned(self, problem):
        return (
            self.compact
            and self.precondition
            and not self.carry_curvature
            and isinstance(problem, AbstractBandedProblem)
        )

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
        if not self.compact:
            return _LBFGSSolver(self.history_length)
        memory = jnp.dtype(dtype if self.memory_dtype is None else self.memory_dtype)
        # Never store pairs more precisely than the iterates.
        if jnp.finfo(memory).bits > jnp.finfo(dtype).bits:
            memory = jnp.dtype(dtype)
        return CompactLBFGS(self.history_length, memory, self.carry_curvature)

    def prepare(self, problem, y0, rf_table, factors):
        if not self.compact:
            return None
        precond = None
        if self._preconditioned(problem):
            precond = TridiagonalPreconditioner.build(
                problem, self.unflatten(problem, y0[0]), rf_table[0], factors
            )
        return Schedule(factors, precond)

    def init(self, problem, y, rf0, shared):
        fn = _action_fn(problem, self.unflatten)
        f_struct, errors_struct = jax.eval_shape(fn, y, rf0)
        if not self.compact:
            return self._solver(y.dtype).init(y, errors_struct)
        return self._solver(y.dtype).init(y, f_struct, errors_struct)

    def step(self, problem, y, rf, beta, loop_step, state, shared):
        fn = _action_fn(problem, self.unflatten)
        solver = self._solver(y.dtype)
        if not self.compact:
            return solver.step(fn, y, rf, loop_step, state)
        return solver.step(fn, y, rf, beta, loop_step, state, shared)

    def restart(self, problem, done, y, rf, beta, state, shared):
        return self._solver(y.dtype).restart(done, state)


class _LBFGSState(eqx.Module):
    """One lane of the optax L-BFGS with a backtracking Armijo search across steps."""

    y_eval: Float[Array, " n"]  # the point evaluated next
    direction: Float[Array, " n"]  # the search direction from the accepted point
    step_size: Float[Array, ""]
    f: Float[Array, ""]  # action and gradient at the accepted point
    grad: Float[Array, " n"]
    memory: optax.ScaleByLBFGSState  # its `count` is set from the loop's step counter
    errors: PyTree[Array]
    first: Bool[Array, ""]
    rejections: Int[Array, ""]


class _LBFGSSolver(eqx.Module):
    """L-BFGS directions from `optax.scale_by_lbfgs`, one evaluation per step.

    All lanes write their (step, gradient change) pairs to the same memory slot, chosen by
    the annealing loop's step counter rather than by a counter of their own: under `vmap`
    the slot index is then a scalar, and the memories are read and written by slicing. A
    lane whose trial point is rejected (Armijo's condition, step halved) writes an empty
    pair (weight 0) to its slot; a pair of non-positive curvature is dropped and that step
    is steepest descent, as is the first step of each β (of unit length, as scipy's).
    """

    history_length: int = eqx.field(static=True)
    armijo: float = eqx.field(static=True, default=1e-4)
    decrease: float = eqx.field(static=True, default=0.5)
    max_rejections: int = eqx.field(static=True, default=30)

    def init(self, y, errors_struct):
        memory = optax.scale_by_lbfgs(self.history_length).init(y)
        # optax indexes its memories by `count + arange(history)`: same integer type.
        memory = memory._replace(
            count=jnp.asarray(0, jnp.arange(1).dtype),
            weights_memory=memory.weights_memory.astype(y.dtype),
        )
        return _LBFGSState(
            y_eval=y,
            direction=jnp.zeros_like(y),
            step_size=jnp.array(1.0, y.dtype),
            f=jnp.array(jnp.inf, y.dtype),
            grad=jnp.zeros_like(y),
            memory=memory,
            errors=jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), errors_struct),
            first=jnp.array(True),
            rejections=jnp.array(0, jnp.int32),
        )

    def restart(self, done, state: _LBFGSState):
        # The (history, n) memories stay: zeroing the weights 1/⟨s, y⟩ (a small leaf)
        # removes their pairs from the two-loop recursion.
        memory = state.memory._replace(
            weights_memory=jnp.where(done, 0.0, state.memory.weights_memory)
        )
        return eqx.tree_at(
            lambda s: (s.step_size, s.f, s.memory, s.first, s.rejections),
            state,
            (
                jnp.where(done, 1.0, state.step_size).astype(state.f.dtype),
                jnp.where(done, jnp.inf, state.f).astype(state.f.dtype),
                memory,
                jnp.where(done, True, state.first),
                jnp.where(done, 0, state.rejections),
            ),
        )

    def step(self, fn, y, rf, loop_step, state: _LBFGSState):
        first = state.first
        trial = jnp.where(first, y, state.y_eval)
        (f, errors), grad = jax.value_and_grad(fn, has_aux=True)(trial, rf)
        slope = jnp.dot(state.grad, state.direction)
        sufficient = f <= state.f + self.armijo * state.step_size * slope
        accept = first | (sufficient & jnp.isfinite(f))
        # The pair (trial − y, grad − grad_y) on acceptance, an empty one otherwise.
        memory = state.memory._replace(
            count=jnp.asarray(loop_step + 1, state.memory.count.dtype),
            params=jnp.where(first, trial, state.memory.params),
            updates=jnp.where(first, grad, state.memory.updates),
        )
        new_params = jnp.where(accept, trial, memory.params)
        new_updates = jnp.where(accept, grad, memory.updates)
        precond, memory = optax.scale_by_lbfgs(self.history_length).update(
            new_updates, memory, new_params
        )
        # A pair of non-positive curvature would spoil the inverse Hessian: drop it.
        slot = (memory.count - 2) % self.history_length
        weights = memory.weights_memory
        weights = weights.at[slot].set(jnp.maximum(weights[slot], 0.0))
        memory = memory._replace(weights_memory=weights)
        norm = jnp.linalg.norm(grad)
        steepest = -grad / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny)
        direction = -precond
        descent = (jnp.dot(grad, direction) < 0) & (weights[slot] > 0)
        direction = jnp.where(first | ~descent, steepest, direction)
        direction = jnp.where(accept, direction, state.direction)
        step_size = jnp.where(accept, 1.0, self.decrease * state.step_size)
        y_new = jnp.where(accept, trial, y)
        f_new = jnp.where(accept, f, state.f)
        grad_new = jnp.where(accept, grad, state.grad)
        errors = jtu.tree_map(lambda a, b: jnp.where(accept, a, b), errors, state.errors)
        rejections = jnp.where(accept, 0, state.rejections + 1)
        new = _LBFGSState(
            y_eval=y_new + step_size * direction,
            direction=direction,
            step_size=step_size,
            f=f_new,
            grad=grad_new,
            memory=memory,
            errors=errors,
            first=first & ~accept,
            rejections=rejections,
        )
        info = StepInfo(
            accepted=accept,
            first=first,
            action=f_new,
            grad=grad_new,
            errors=errors,
            predicted_decrease=jnp.where(accept, -0.5 * jnp.dot(grad_new, direction), jnp.inf),
            failed=rejections >= self.max_rejections,
        )
        return y_new, new, info
