"""The family of discretisations that [`deepest.solve_tpbvp`][] drives."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Float, PyTree

from ..._misc import is_concrete
from .._problem import AbstractBoundaryValueProblem
from .._solution import TPBVPSolution


class AbstractTPBVPMethod(eqx.Module):
    """A discretisation of a boundary-value problem for [`deepest.solve_tpbvp`][]:
    [`deepest.MultipleShooting`][], [`deepest.Shooting`][] or [`deepest.Collocation`][].

    Each method turns the problem into a square system R(u) = 0, solves it by Newton's
    method and returns the path; gradients with respect to the problem's arrays come from
    the implicit function theorem at the root. Subclasses provide `max_newton_steps`,
    `solve` and `output_times`.
    """

    max_newton_steps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def solve(self, problem: AbstractBoundaryValueProblem, guess: Callable) -> TPBVPSolution:
        """Solve `problem` by Newton's method from `guess`, a function `t -> (x, p)`.

        Failures are reported in the solution's `result`, never raised
        ([`deepest.solve_tpbvp`][] raises for `throw=True`).
        """

    @abc.abstractmethod
    def output_times(self, nodes: Float[Array, " n_nodes"]) -> Float[Array, " n"]:
        """The solution's output times `ts` on a problem with these node times (on the
        initial mesh, before any refinement)."""


def default_tol(dtype) -> float:
    """Newton's default tolerance: 1e-10 in float64, 1e-5 in float32."""
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


def check_guess(problem: AbstractBoundaryValueProblem, unknowns: PyTree[Array]) -> PyTree[Array]:
    """`unknowns` sampled from a guess, checked: x and p of shape (dim,) (at trace time) and
    finite (in Python when concrete, else by `eqx.error_if`)."""
    leaves = jtu.tree_leaves(unknowns)
    for leaf in leaves[:2]:
        if leaf.shape[-1:] != (problem.dim,):
            raise ValueError(
                f"The initial guess must give x and p of shape ({problem.dim},); got "
                f"{leaf.shape[-1:]}."
            )
    message = "The initial guess contains NaN or inf; pass a finite guess."
    if is_concrete(leaves):
        if not all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves):
            raise ValueError(message)
        return unknowns
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
    return eqx.error_if(unknowns, ~finite, message)
