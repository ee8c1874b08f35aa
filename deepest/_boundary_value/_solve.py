"""The entry points: `solve_tpbvp` and its continuation in R_f, `anneal_tpbvp`."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._misc import is_concrete
from .._results import RESULTS
from ._method import AbstractTPBVPMethod, MultipleShooting
from ._problem import AbstractAnnealableBoundaryValueProblem, AbstractBoundaryValueProblem
from ._solution import TPBVPSolution


def _check_problem(problem):
    if not isinstance(problem, AbstractBoundaryValueProblem):
        raise TypeError(
            f"`problem` must be a deepest boundary-value problem (e.g. "
            f"deepest.ContinuousAssimilation or deepest.BoundaryValueProblem); got "
            f"{type(problem).__name__}."
        )
    nodes = problem.node_times()
    if is_concrete(nodes):
        nodes_np = np.asarray(nodes)
        if not np.all(np.isfinite(nodes_np)) or np.any(np.diff(nodes_np) <= 0):
            raise ValueError(
                f"The problem's node times must be finite and strictly increasing (T > 0); "
                f"got {nodes_np}."
            )
    return nodes


def _check_method(method) -> AbstractTPBVPMethod:
    if method is None:
        return MultipleShooting()
    if not isinstance(method, AbstractTPBVPMethod):
        raise TypeError(f"`method` must be a deepest TPBVP method; got {type(method).__name__}.")
    return method


def _guess_function(problem, guess) -> Callable:
    if guess is None:
        return problem.initial_guess
    if isinstance(guess, TPBVPSolution):
        return guess.evaluate
    if callable(guess):
        return guess
    raise TypeError(
        "`guess` must be None, a callable t -> (x, p), or a deepest.TPBVPSolution; got "
        f"{type(guess).__name__}."
    )


_NOT_CONVERGED = (
    "Newton's method did not converge to a finite root of the boundary-value problem. Try "
    "a better `guess`, more segments or nodes, continuation in R_f (deepest.anneal_tpbvp), "
    "or pass throw=False to inspect the result code."
)
_MAX_NODES = (
    "Raise `max_nodes`, loosen `tol`, or pass throw=False to use the solution on the full "
    "mesh (flagged deepest.RESULTS.max_nodes_reached)."
)


def _messages() -> list[str]:
    """The error of each RESULTS code: its message, then what to try."""
    max_nodes = int(RESULTS.max_nodes_reached._value)
    return [
        f"solve_tpbvp: {message} {_MAX_NODES if i == max_nodes else _NOT_CONVERGED}"
        for i, message in enumerate(RESULTS._index_to_message)
    ]


def solve_tpbvp(
    problem: AbstractBoundaryValueProblem,
    method: AbstractTPBVPMethod | None = None,
    guess: Callable | TPBVPSolution | None = None,
    *,
    throw: bool = True,
) -> TPBVPSolution:
    """Solve a two-point boundary value problem for the pair (x, p).

    The method turns the problem into a square system R(u) = 0 (see
    [`deepest.MultipleShooting`][], [`deepest.Shooting`][], [`deepest.Collocation`][]) and
    solves it by Newton's method (its own `solve`): `optimistix.root_find` (lineax LU by
    default) for the shooting methods, a structured factorisation for collocation (which
    may also refine its mesh). Gradients with respect to the problem's arrays (model
    weights, data, R_m, R_f) come from the implicit function theorem, not from unrolling
    Newton. Runs under `jit` and `vmap` (over problems or guesses).

    **Arguments:**

    - `problem`: a [`deepest.ContinuousAssimilation`][] or [`deepest.BoundaryValueProblem`][].
    - `method`: a [`deepest.AbstractTPBVPMethod`][], the discretisation (default
      `MultipleShooting()`).
    - `guess`: `None` (the problem's default guess), a callable `t -> (x, p)`, or a previous
      [`deepest.TPBVPSolution`][] (continuation).
    - `throw`: raise (an `equinox.EquinoxRuntimeError` naming the [`deepest.RESULTS`][]
      message) if the solve failed: Newton did not converge, or a refining collocation
      mesh filled up (default); with `False` the failure is reported in
      `solution.result` (check `solution.converged`). The same meaning as every entry
      point's `throw` (see [`deepest.RESULTS`][]).

    **Returns:** a [`deepest.TPBVPSolution`][].

    **Example:**

        problem = deepest.ContinuousAssimilation(model, data, rm=100.0, rf=10.0)
        sol = deepest.solve_tpbvp(problem, deepest.MultipleShooting(8))
        x_mid, p_mid = sol.evaluate(0.5)
    """
    method = _check_method(method)
    _check_problem(problem)
    sol = method.solve(problem, _guess_function(problem, guess))
    if throw:  # the call's one solve failed: raise, naming its RESULTS message
        failed = sol.result != RESULTS.successful
        xs = eqx.branched_error_if(sol.xs, failed, sol.result._value, _messages())
        sol = eqx.tree_at(lambda s: s.xs, sol, xs)
    return sol


def anneal_tpbvp(
    problem: AbstractBoundaryValueProblem,
    rfs: Float[ArrayLike, " n_rf"],
    method: AbstractTPBVPMethod | None = None,
    guess: Callable | TPBVPSolution | None = None,
    *,
    throw: bool = True,
) -> TPBVPSolution:
    """Continuation in R_f (annealing in continuous time): solve at each `rfs[i]` in turn,
    starting Newton from the solution at `rfs[i − 1]`.

    Small R_f makes the problem nearly the measurement-only one (easy); increasing R_f
    follows the solution branch to the model-dominated regime, where Newton from a poor
    guess would fail. Runs in one `lax.scan` (one compile), under `jit` and `vmap`.

    **Arguments:**

    - `problem`: an [`deepest.AbstractAnnealableBoundaryValueProblem`][] (e.g.
      [`deepest.ContinuousAssimilation`][]).
    - `rfs`: the R_f values, typically geometric, `rf0 * alpha ** jnp.arange(n_beta)`.
    - `method`, `guess`, `throw`: as [`deepest.solve_tpbvp`][]; `throw` applies to each
      solve.

    **Returns:** the [`deepest.TPBVPSolution`][]s stacked along a leading axis of size n_rf
    (one solution Module: `sols.result[i]` is the code of the solve at `rfs[i]`,
    `sols.converged` says which converged, `jax.tree.map(lambda a: a[i], sols)` is that
    solve's solution).

    **Example:**

        sols = deepest.anneal_tpbvp(problem, 1e-2 * 2.0 ** jnp.arange(20))
        best = jax.tree.map(lambda a: a[-1], sols)
    """
    if not isinstance(problem, AbstractAnnealableBoundaryValueProblem):
        raise TypeError(
            f"{type(problem).__name__} has no R_f to anneal: `anneal_tpbvp` takes a "
            "`deepest.AbstractAnnealableBoundaryValueProblem` (e.g. "
            "`deepest.ContinuousAssimilation`)."
        )
    if is_concrete(rfs) and not np.all(np.asarray(rfs) > 0):
        raise ValueError("Every R_f in `rfs` must be positive.")
    rfs = jnp.asarray(rfs, jnp.result_type(problem.rf))
    if rfs.ndim != 1 or rfs.shape[0] < 1:
        raise ValueError(f"`rfs` must be a non-empty 1-D array; got shape {rfs.shape}.")

    def at(rf):
        return eqx.tree_at(lambda p: p.rf, problem, jnp.broadcast_to(rf, jnp.shape(problem.rf)))

    method = _check_method(method)
    if isinstance(guess, TPBVPSolution):
        start = guess
    else:
        # The first guess as a solution-shaped carry (its values at the output times of the
        # method's mesh), so that every R_f runs the same compiled solve inside the scan.
        guess_fn = _guess_function(problem, guess)
        ts = method.output_times(_check_problem(problem))
        xs, ps = jax.vmap(guess_fn)(ts)
        zero = jnp.zeros((), xs.dtype)
        start = TPBVPSolution(
            ts,
            xs,
            ps,
            jnp.zeros_like(xs),
            jnp.zeros_like(ps),
            zero,
            RESULTS.successful,
            jnp.array(0),
            jnp.array(0),
        )

    def body(previous, rf):
        sol = solve_tpbvp(at(rf), method, previous, throw=throw)
        return sol, sol

    _, sols = jax.lax.scan(body, start, rfs)
    return sols
