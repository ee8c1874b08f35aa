"""Shooting methods: segments integrated with a diffrax solver, matched by optimistix."""

import abc
import dataclasses
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float, PyTree

from ..._misc import Pair, positive_int, tree_where
from ..._results import RESULTS
from .._solution import build_solution
from ._base import AbstractTPBVPMethod, check_guess, default_tol
from ._flow import adaptive_end, adaptive_flow, fixed_flow, with_stage_loop


def _dense_times(ta, tb, steps: int) -> Float[Array, " n"]:
    """`steps + 1` equally spaced times on each segment [ta, tb], segments concatenated."""
    frac = jnp.linspace(0, 1, steps + 1, dtype=ta.dtype)
    return (ta[:, None] + (tb - ta)[:, None] * frac[None]).reshape(-1)


class _AbstractShooting(AbstractTPBVPMethod):
    """Shooting methods: the unknowns are states at segment starts, integrated across their
    segments with a diffrax solver; Newton's method is `optimistix.root_find`."""

    root_finder: eqx.AbstractVar[optx.AbstractRootFinder | optx.AbstractLeastSquaresSolver | None]
    solver: eqx.AbstractVar[diffrax.AbstractSolver]
    stepsize_controller: eqx.AbstractVar[diffrax.AbstractStepSizeController | None]
    max_steps: eqx.AbstractVar[int]
    forward_only: eqx.AbstractVar[bool]

    @property
    @abc.abstractmethod
    def steps(self) -> int:
        """Fixed steps (or dense points) per segment."""

    @abc.abstractmethod
    def segment_times(self, nodes: Float[Array, " n_nodes"]) -> tuple[Array, Array]:
        """(starts, ends) of the segments on the problem's node times."""

    @abc.abstractmethod
    def unknowns_from(self, guess: Callable, ta, tb) -> PyTree[Array]:
        """The Newton unknowns sampled from a guess `t -> (x, p)`."""

    @abc.abstractmethod
    def residual(self, problem, unknowns: PyTree[Array]) -> PyTree[Array]:
        """The shooting equations R(u): zero at a solution."""

    @abc.abstractmethod
    def dense(self, problem, ta, tb, unknowns) -> tuple[Array, Pair]:
        """Output times (segments concatenated) and states there."""

    def output_times(self, nodes):
        return _dense_times(*self.segment_times(nodes), self.steps)

    def solve(self, problem, guess):
        nodes = problem.node_times()
        ta, tb = self.segment_times(nodes)
        unknowns0 = check_guess(problem, self.unknowns_from(guess, ta, tb))
        root_finder = self.root_finder
        if root_finder is None:
            tol = default_tol(nodes.dtype)
            root_finder = optx.Newton(rtol=tol, atol=tol, linear_solver=lx.LU())

        dynamic, static = eqx.partition(problem, eqx.is_inexact_array)
        # Newton iterates with forward-mode-only flows (fast); derivatives with respect to the
        # problem then come from one implicit-function-theorem step at the root,
        # u = u* − J⁻¹ R(u*, θ) with J frozen: its value is u* (R(u*) ≈ 0) and its derivative
        # is exactly −J⁻¹ ∂R/∂θ.
        fast = dataclasses.replace(self, forward_only=True)
        frozen = jax.lax.stop_gradient(dynamic)
        solution = optx.root_find(
            lambda u, d: fast.residual(eqx.combine(d, static), u),
            root_finder,
            unknowns0,
            frozen,
            max_steps=self.max_newton_steps,
            throw=False,
        )
        root = jax.lax.stop_gradient(solution.value)
        flat_root, unravel = jax.flatten_util.ravel_pytree(root)

        def flat_residual(v, prob, method):
            return jax.flatten_util.ravel_pytree(method.residual(prob, unravel(v)))[0]

        jac = jax.jacfwd(flat_residual)(flat_root, eqx.combine(frozen, static), fast)
        residual = flat_residual(flat_root, problem, self)
        correction = lx.linear_solve(
            lx.MatrixLinearOperator(jac), residual, lx.LU(), throw=False
        ).value
        unknowns = unravel(flat_root - correction)
        ts, ys = self.dense(problem, ta, tb, unknowns)
        return build_solution(
            problem,
            ts,
            ys,
            jax.lax.stop_gradient(residual),
            RESULTS.promote(solution.result),
            solution.stats["num_steps"],
            ta.shape[0] + 1,
        )

    def _flow(self, problem, ta, tb, y):
        term = diffrax.ODETerm(problem.vector_field)
        solver = with_stage_loop(self.solver, forward_only=False)
        if self.stepsize_controller is None:
            return fixed_flow(solver, term, ta, tb, y, None, self.steps)
        return adaptive_flow(
            solver, self.stepsize_controller, self.max_steps, term, ta, tb, y, None, self.steps
        )

    def _end(self, problem, ta, tb, y):
        if self.forward_only:
            dynamic, static = eqx.partition(problem, eqx.is_inexact_array)
            return _end_with_sensitivity(self, static, dynamic, ta, tb, y)
        return self._integrate_end(problem, ta, tb, y)

    def _integrate_end(self, problem, ta, tb, y):
        term = diffrax.ODETerm(problem.vector_field)
        solver = with_stage_loop(self.solver, self.forward_only)
        if self.stepsize_controller is None:
            ys = fixed_flow(solver, term, ta, tb, y, None, self.steps)
            return jtu.tree_map(lambda a: a[-1], ys)
        return adaptive_end(
            solver,
            self.stepsize_controller,
            self.max_steps,
            term,
            ta,
            tb,
            y,
            self.steps,
            self.forward_only,
        )

    def _check(self):
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"The number of steps per segment must be ≥ 1; got {self.steps}.")
        positive_int(self.max_newton_steps, "max_newton_steps")
        if not isinstance(self.solver, diffrax.AbstractSolver):
            raise TypeError(f"`solver` must be a diffrax solver; got {self.solver!r}.")


@eqx.filter_custom_jvp
def _end_with_sensitivity(method, static, dynamic, ta, tb, y):
    """The segment's end state; its JVP is the segment's sensitivity matrix times the tangent.

    Newton's Jacobian materialises the JVP of the residual for every unknown. Computing each
    segment's 2·dim × 2·dim sensitivity once (forward mode, its own start only) and applying
    it to the tangents costs 2·dim tangent integrations per segment instead of one per
    unknown of the whole system. Used only where the problem is held fixed (Newton's
    iterations), so the tangents of the problem and of the times are not propagated.
    """
    return method._integrate_end(eqx.combine(dynamic, static), ta, tb, y)


@_end_with_sensitivity.def_jvp
def _end_with_sensitivity_jvp(primals, tangents):
    method, static, dynamic, ta, tb, y = primals
    problem = eqx.combine(dynamic, static)
    flat, unravel = jax.flatten_util.ravel_pytree(y)

    def end(v):
        return jax.flatten_util.ravel_pytree(method._integrate_end(problem, ta, tb, unravel(v)))[0]

    def end_twice(v):
        out = end(v)
        return out, out

    sensitivity, out = jax.jacfwd(end_twice, has_aux=True)(flat)
    dy = tangents[-1]
    dflat = jnp.zeros_like(flat) if dy is None else jax.flatten_util.ravel_pytree(dy)[0]
    return unravel(out), unravel(sensitivity @ dflat)


class MultipleShooting(_AbstractShooting):
    """Multiple shooting: integrate each segment from its unknown start, match the ends.

    Unknowns are y = (x, p) at the start of every segment (`n_segments` per interval between
    nodes); residuals are the continuity conditions y(end of segment s) → jump → = y(start of
    s + 1) and the boundary conditions. Segments are integrated in parallel (vmap) with any
    diffrax solver: explicit ones (default Tsit5 at fixed steps, or adaptive with a
    `stepsize_controller`) or the symplectic ones of `deepest.integrators`.

    **Arguments:**

    - `n_segments`: segments per interval between consecutive nodes.
    - `solver`: a diffrax solver for the pair (x, p) (default `diffrax.Tsit5()`).
    - `steps_per_segment`: fixed steps per segment; with a `stepsize_controller`, the number
      of dense output points per segment.
    - `stepsize_controller`: e.g. `diffrax.PIDController(rtol, atol)` for adaptive steps
      (default: fixed steps).
    - `root_finder`: an optimistix root finder or least-squares solver (default
      `optx.Newton` with LU, tolerance 1e-10 in float64; `optx.GaussNewton` or
      `optx.LevenbergMarquardt` are alternatives for poor guesses).
    - `max_newton_steps`: Newton iterations before giving up.
    - `max_steps`: diffrax step budget per segment (adaptive only).
    - `forward_only`: internal; [`deepest.solve_tpbvp`][] sets it for Newton's iterations,
      which need only forward-mode derivatives of the flows (faster stage loops).

    **Example:**

        method = deepest.MultipleShooting(8, deepest.integrators.SymplecticGaussLegendre(),
                                          steps_per_segment=16)
    """

    n_segments: int = eqx.field(default=4, static=True)
    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    steps_per_segment: int = eqx.field(default=8, static=True)
    stepsize_controller: diffrax.AbstractStepSizeController | None = None
    root_finder: optx.AbstractRootFinder | optx.AbstractLeastSquaresSolver | None = None
    max_newton_steps: int = eqx.field(default=32, static=True)
    max_steps: int = eqx.field(default=256, static=True)
    forward_only: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        positive_int(self.n_segments, "n_segments")
        self._check()

    @property
    def steps(self):
        return self.steps_per_segment

    def segment_times(self, nodes):
        frac = jnp.arange(self.n_segments, dtype=nodes.dtype) / self.n_segments
        ta = (nodes[:-1, None] + (nodes[1:] - nodes[:-1])[:, None] * frac[None]).reshape(-1)
        tb = jnp.concatenate([ta[1:], nodes[-1:]])
        return ta, tb

    def unknowns_from(self, guess, ta, tb):
        return jax.vmap(guess)(ta)

    def residual(self, problem, starts):
        """(continuity after the jumps, boundary conditions), for the segment starts."""
        nodes = problem.node_times()
        ta, tb = self.segment_times(nodes)
        ends = jax.vmap(lambda a, b, y: self._end(problem, a, b, y))(ta, tb, starts)
        first = jtu.tree_map(lambda a: a[0], starts)
        last = jtu.tree_map(lambda a: a[-1], ends)
        boundary = problem.boundary_residual(first, last)
        n_nodes = nodes.shape[0]
        if n_nodes > 2:
            idx = np.arange(1, n_nodes - 1) * self.n_segments - 1
            jumped = jax.vmap(problem.jump)(
                jnp.arange(1, n_nodes - 1), jtu.tree_map(lambda a: a[idx], ends)
            )
            ends = jtu.tree_map(lambda a, j: a.at[idx].set(j), ends, jumped)
        continuity = jtu.tree_map(lambda e, s: e[:-1] - s[1:], ends, starts)
        return continuity, boundary

    def dense(self, problem, ta, tb, starts):
        ys = jax.vmap(lambda a, b, y: self._flow(problem, a, b, y))(ta, tb, starts)
        return _dense_times(ta, tb, self.steps), jtu.tree_map(
            lambda a: a.reshape(-1, a.shape[-1]), ys
        )


class Shooting(_AbstractShooting):
    """Single shooting: the one unknown is y(t_0), integrated across [t_0, t_1] with jumps.

    Cheapest per Newton step, but the Jacobian is the whole flow's sensitivity, so it is
    ill-conditioned over long or unstable intervals (use [`deepest.MultipleShooting`][]).

    **Arguments:** as [`deepest.MultipleShooting`][], with `steps_per_interval` fixed steps
    (or dense points) per interval between nodes.

    **Example:**

        sol = deepest.solve_tpbvp(problem, deepest.Shooting(steps_per_interval=64))
    """

    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    steps_per_interval: int = eqx.field(default=32, static=True)
    stepsize_controller: diffrax.AbstractStepSizeController | None = None
    root_finder: optx.AbstractRootFinder | optx.AbstractLeastSquaresSolver | None = None
    max_newton_steps: int = eqx.field(default=32, static=True)
    max_steps: int = eqx.field(default=1024, static=True)
    forward_only: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        self._check()

    @property
    def steps(self):
        return self.steps_per_interval

    def segment_times(self, nodes):
        return nodes[:-1], nodes[1:]

    def unknowns_from(self, guess, ta, tb):
        return guess(ta[0])

    def _sweep(self, problem, ta, tb, y0, dense):
        n = ta.shape[0]

        def body(y, inputs):
            k, a, b = inputs
            ys = self._flow(problem, a, b, y) if dense else None
            end = jtu.tree_map(lambda u: u[-1], ys) if dense else self._end(problem, a, b, y)
            jumped = problem.jump(jnp.minimum(k + 1, n - 1), end)
            after = tree_where(k + 1 < n, jumped, end)
            return after, (ys, end)

        _, (ys, ends) = jax.lax.scan(body, y0, (jnp.arange(n), ta, tb))
        return ys, ends

    def residual(self, problem, y0):
        """The boundary conditions at y(t_0) and the end of the sweep from it."""
        ta, tb = self.segment_times(problem.node_times())
        # Only the last end enters a residual; earlier ends are continuous by construction.
        _, ends = self._sweep(problem, ta, tb, y0, dense=False)
        return problem.boundary_residual(y0, jtu.tree_map(lambda a: a[-1], ends))

    def dense(self, problem, ta, tb, y0):
        ys, _ = self._sweep(problem, ta, tb, y0, dense=True)
        return _dense_times(ta, tb, self.steps), jtu.tree_map(
            lambda a: a.reshape(-1, a.shape[-1]), ys
        )
