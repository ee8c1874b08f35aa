"""The L-BFGS of earlier versions of deepest, kept as a baseline for `bench_anneal.py`:
optax's two-loop recursion (`optax.scale_by_lbfgs`) with a backtracking Armijo search
across steps, one lane per path.

It was `deepest.LBFGS(compact=False)`. The compact L-BFGS that replaced it reads its
memories twice per step instead of 4m times, and is preconditioned for banded problems
(BENCHMARKS.md, "Annealing you can trust"). Built on the public minimiser protocol
(`deepest.minimisers.AbstractMinimiser`), as any user's minimiser would be:

    deepest.anneal(problem, schedule, n_paths, key, minimiser=OptaxLBFGS())
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, Int, PyTree

from deepest.minimisers import AbstractMinimiser, StepInfo


class _State(eqx.Module):
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


class OptaxLBFGS(AbstractMinimiser):
    """L-BFGS directions from `optax.scale_by_lbfgs`, one evaluation per step.

    All lanes write their (step, gradient change) pairs to the same memory slot, chosen by
    the annealing loop's step counter rather than by a counter of their own: under `vmap`
    the slot index is then a scalar, and the memories are read and written by slicing. A
    lane whose trial point is rejected (Armijo's condition, step halved) writes an empty
    pair (weight 0) to its slot; a pair of non-positive curvature is dropped and that step
    is steepest descent, as is the first step of each β (of unit length, as scipy's).

    **Arguments:**

    - `history_length`: the number m of pairs kept.
    - `armijo`, `decrease`: Armijo's constant and the factor a rejected step is cut by.
    - `max_rejections`: the trial points rejected in a row before the search gives up.
    """

    history_length: int = eqx.field(default=10, static=True)
    armijo: float = eqx.field(default=1e-4, static=True)
    decrease: float = eqx.field(default=0.5, static=True)
    max_rejections: int = eqx.field(default=30, static=True)

    def flatten(self, problem, unknowns):
        return ravel_pytree(unknowns)[0]

    def unflatten(self, problem, y):
        template = jax.eval_shape(problem.init, jax.random.key(0))
        zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, y.dtype), template)
        return ravel_pytree(zeros)[1](y)

    def _fn(self, problem):
        def fn(y, rf):
            u = self.unflatten(problem, y)
            return problem.action(u, rf), (problem.measurement_error(u), problem.model_error(u))

        return fn

    def init(self, problem, y, rf0, shared):
        _, errors_struct = jax.eval_shape(self._fn(problem), y, rf0)
        memory = optax.scale_by_lbfgs(self.history_length).init(y)
        # optax indexes its memories by `count + arange(history)`: same integer type.
        memory = memory._replace(
            count=jnp.asarray(0, jnp.arange(1).dtype),
            weights_memory=memory.weights_memory.astype(y.dtype),
        )
        return _State(
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

    def restart(self, problem, done, y, rf, beta, state: _State, shared):
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

    def step(self, problem, y, rf, beta, loop_step, state: _State, shared):
        first = state.first
        trial = jnp.where(first, y, state.y_eval)
        (f, errors), grad = jax.value_and_grad(self._fn(problem), has_aux=True)(trial, rf)
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
        new = _State(
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
