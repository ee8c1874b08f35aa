"""The family of minimisers of each β in [`deepest.anneal`][]: what one must provide.

Each is driven one step at a time (one evaluation of the action per step) by the
annealing loop, one lane per path. A minimiser decides the space the loop works in (a flat
vector), starts a lane (`init`), takes one step and says what happened in a
[`StepInfo`][deepest.minimisers.StepInfo] (`step`), and starts the next β where the loop says
so (`restart`). The loop applies the stopping rule; it never reads a solver's state. The
structure a minimiser may use (banded residuals or not) it asks of the problem, through
[`deepest.AbstractProblem.banded_shape`][].
"""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from .._problem import AbstractProblem


class StepInfo(eqx.Module):
    """What one step of a minimiser tells the annealing loop, for one lane.

    - `accepted`: the evaluated point was accepted (it is now the lane's point).
    - `first`: the step evaluated the first point of a β (accepted unless non-finite).
    - `action`, `grad`: the action and its gradient at the accepted point.
    - `errors`: (measurement error, model error) at the accepted point.
    - `predicted_decrease`: the decrease the minimiser's local model still expects at the
      accepted point (½ gᵀHg for L-BFGS), or the last decrease where it has no model; on
      the step the search fails (`failed`), the decrease it expected along the direction
      it failed on (∞ where it has none).
    - `failed`: the line search or trust region can make no more progress.
    """

    accepted: Bool[Array, ""]
    first: Bool[Array, ""]
    action: Float[Array, ""]
    grad: Float[Array, " n"]
    errors: PyTree[Array]
    predicted_decrease: Float[Array, ""]
    failed: Bool[Array, ""]


def flat_bounds(
    minimiser: "AbstractMinimiser", problem: AbstractProblem, dtype
) -> tuple[Float[Array, " n"], Float[Array, " n"]] | None:
    """The problem's box (`problem.bounds()`) in the minimiser's flat layout, as
    (lower, upper) of `dtype`; `None` when the problem bounds nothing."""
    box = problem.bounds()
    if box is None:
        return None
    lower, upper = (minimiser.flatten(problem, b).astype(dtype) for b in box)
    return lower, upper


def projected_gradient(
    y: Float[Array, " n"], grad: Float[Array, " n"], lower: Array, upper: Array
) -> Float[Array, " n"]:
    """The gradient with the entries that push against an active bound set to zero (an
    entry at its lower bound with g > 0, or at its upper bound with g < 0): zero exactly
    at a point that satisfies the KKT conditions of the box."""
    blocked = ((y <= lower) & (grad > 0)) | ((y >= upper) & (grad < 0))
    return jnp.where(blocked, 0, grad)


def action_errors(problem: AbstractProblem, unknowns: PyTree[Array]) -> tuple[Scalar, Scalar]:
    """(measurement error, model error) of `unknowns`: what a step reports in
    `StepInfo.errors`."""
    return problem.measurement_error(unknowns), problem.model_error(unknowns)


class AbstractMinimiser(eqx.Module):
    """The minimiser used at each β of [`deepest.anneal`][].

    Subclasses say how a problem's unknowns map to the flat vector the annealing loop
    carries (`flatten`, `unflatten`), what all lanes share (`prepare`), start a lane
    (`init`), step it (`step`, one evaluation of the action) and start its next β
    (`restart`).
    """

    def check(self, problem: AbstractProblem) -> None:  # noqa: B027
        """Raise `ValueError` if this minimiser cannot solve `problem`. Default: any
        problem."""

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
