"""The minimiser of each β in [`deepest.anneal`][]: L-BFGS, or Levenberg–Marquardt on the
block-banded structure that an action summed over time has.

Both are driven one step at a time (one evaluation of the action per step) by the
annealing loop, one lane per path: L-BFGS takes its directions from optax, LM is an
optimistix solver; both have optimistix's `init`/`step` signature. A minimiser decides the
space the loop works in (a flat vector), the function its solver sees, and how to read the
action and its gradient at the last accepted point from the solver's state.
Levenberg–Marquardt lives in `_levenberg_marquardt.py`.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PyTree

from ._problem import AbstractProblem


class AbstractMinimiser(eqx.Module):
    """The minimiser used at each β of [`deepest.anneal`][].

    Subclasses say how a problem's unknowns map to the flat vector the annealing loop
    carries (`flatten`, `unflatten`), which optimistix solver steps it and on what
    function (`solver_and_fn`), and how to read the action and its gradient at the last
    accepted point from the solver's state (`action_and_grad`).
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

    @abc.abstractmethod
    def solver_and_fn(self, problem: AbstractProblem, y: Float[Array, " n"]):
        """An optimistix solver and the function `fn(y, rf) -> (out, (meas, model))` it
        steps (a scalar for a minimiser, residuals for a least-squares solver)."""

    @abc.abstractmethod
    def action_and_grad(self, state) -> tuple[Float[Array, ""], Float[Array, " n"]]:
        """The action and its gradient at the solver's last accepted point."""


def _errors(problem, u):
    return problem.measurement_error(u), problem.model_error(u)


class LBFGS(AbstractMinimiser):
    """Limited-memory BFGS on the action, the default.

    Works for every problem. The directions come from [`optax.scale_by_lbfgs`][]; a
    backtracking Armijo search runs across steps, so one step is one value-and-gradient
    evaluation (see `_LBFGSSolver`).

    **Arguments:**

    - `history_length`: the number of (step, gradient change) pairs kept (≥ 1).
    """

    history_length: int = eqx.field(default=10, static=True)

    def __check_init__(self):
        if int(self.history_length) != self.history_length or self.history_length < 1:
            raise ValueError(
                f"`history_length` must be a positive integer; got {self.history_length}."
            )

    def check(self, problem):
        pass

    def flatten(self, problem, unknowns):
        return ravel_pytree(unknowns)[0]

    def unflatten(self, problem, y):
        template = jax.eval_shape(problem.init, jax.random.key(0))
        zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, y.dtype), template)
        return ravel_pytree(zeros)[1](y)

    def solver_and_fn(self, problem, y):
        def fn(y, rf):
            u = self.unflatten(problem, y)
            return problem.action(u, rf), _errors(problem, u)

        return _LBFGSSolver(self.history_length), fn

    def action_and_grad(self, state):
        return state.f, state.grad


class _LBFGSState(eqx.Module):
    """One lane of the optax L-BFGS with a backtracking Armijo search across steps."""

    y_eval: Float[Array, " n"]  # the point evaluated next
    direction: Float[Array, " n"]  # the search direction from the accepted point
    step_size: Float[Array, ""]
    f: Float[Array, ""]  # action and gradient at the accepted point
    grad: Float[Array, " n"]
    memory: optax.ScaleByLBFGSState  # its `count` is set from the loop's step counter
    aux: PyTree[Array]
    num_accepted_steps: Int[Array, ""]
    result: optx.RESULTS


class _LBFGSSolver(eqx.Module):
    """L-BFGS directions from [`optax.scale_by_lbfgs`][], one evaluation per step.

    All lanes write their (step, gradient change) pairs to the same memory slot, chosen by
    the annealing loop's step counter (`options["loop_step"]`) rather than by a counter of
    their own: under `vmap` the slot index is then a scalar, and the memories are read and
    written by slicing rather than by per-lane gathers and scatters (half the time per
    step of optimistix's L-BFGS, whose per-lane counters become gathers: BENCHMARKS.md).
    A lane's path still depends on its own data only. A lane whose trial point is
    rejected (Armijo's condition, step halved) writes an empty pair (weight 0) to its
    slot; a pair of non-positive curvature is dropped and that step is steepest descent,
    as is the first step of each minimisation (scaled to length ≤ 1, as optax does).
    """

    history_length: int = eqx.field(static=True)
    armijo: float = eqx.field(static=True, default=1e-4)
    decrease: float = eqx.field(static=True, default=0.5)

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
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
            aux=jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), aux_struct),
            num_accepted_steps=jnp.array(0, jnp.int32),
            result=optx.RESULTS.successful,
        )

    def step(self, fn, y, args, options, state: _LBFGSState, tags):
        (f, aux), grad = jax.value_and_grad(fn, has_aux=True)(state.y_eval, args)
        first = state.num_accepted_steps == 0
        slope = jnp.dot(state.grad, state.direction)
        sufficient = f <= state.f + self.armijo * state.step_size * slope
        accept = first | (sufficient & jnp.isfinite(f))
        # The pair (y_eval − y, grad − grad_y) on acceptance, an empty one otherwise.
        memory = state.memory._replace(
            count=jnp.asarray(options["loop_step"] + 1, state.memory.count.dtype),
            params=jnp.where(first, state.y_eval, state.memory.params),
            updates=jnp.where(first, grad, state.memory.updates),
        )
        new_params = jnp.where(accept, state.y_eval, memory.params)
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
        steepest = -grad * jnp.minimum(1.0, 1.0 / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny))
        direction = -precond
        descent = (jnp.dot(grad, direction) < 0) & (weights[slot] > 0)
        direction = jnp.where(first | ~descent, steepest, direction)
        direction = jnp.where(accept, direction, state.direction)
        step_size = jnp.where(accept, 1.0, self.decrease * state.step_size)
        y_new = jnp.where(accept, state.y_eval, y)
        new = _LBFGSState(
            y_eval=y_new + step_size * direction,
            direction=direction,
            step_size=step_size,
            f=jnp.where(accept, f, state.f),
            grad=jnp.where(accept, grad, state.grad),
            memory=memory,
            aux=jtu.tree_map(lambda a, b: jnp.where(accept, a, b), aux, state.aux),
            num_accepted_steps=state.num_accepted_steps + accept.astype(jnp.int32),
            result=state.result,
        )
        return y_new, new, None
