r"""Two-point boundary value problems of Hamiltonian type, solved with diffrax and optimistix.

A problem is a first-order system for the pair y = (x, p) on [t_0, t_1],

    ẏ = f(t, y),   b(y(t_0), y(t_1)) = 0,   y(τ_k⁺) = J_k(y(τ_k⁻)) at interior nodes τ_k,

with 2·dim boundary conditions b and explicit jump maps J_k (interior measurements). Three
methods turn it into one square nonlinear system solved by Newton's method (the shooting
methods by `optimistix.root_find` with lineax LU; collocation with a structured linear solve),
differentiable with respect to the problem's arrays through the implicit function theorem
(one Newton step with the Jacobian frozen, taken at the root):

- [`deepest.MultipleShooting`][]: unknowns y at segment starts, segments integrated with a
  diffrax solver (vmapped); residuals are continuity (after the jumps) and boundary conditions.
- [`deepest.Shooting`][]: one unknown y(t_0), integrated across the whole interval.
- [`deepest.Collocation`][]: the Lobatto IIIA–IIIB pair (3 stages, order 4, symplectic) with
  nodes and stages as unknowns, its Newton system solved with its block structure, and
  residual-controlled mesh refinement on a fixed maximal mesh with masking.

Array shapes are static: the shooting methods cut each interval between consecutive nodes
(t_0, the τ_k, t_1) into the same number of equal pieces, collocation keeps a maximal mesh of
which a traced number of nodes is active; so the node *times* may be traced (vmap over problems
with different observation times) while the shapes stay fixed.
"""

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
from jaxtyping import Array, ArrayLike, Float, Int, PyTree, Scalar

from .._linalg import gauss_jordan

_Pair = tuple[Array, Array]


def _is_concrete(x) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jtu.tree_leaves(x))


def _tree_where(pred, a, b):
    return jtu.tree_map(lambda u, v: jnp.where(pred, u, v), a, b)


# -------------------------------------------------------------------------------------------
# Problems
# -------------------------------------------------------------------------------------------


class AbstractBoundaryValueProblem(eqx.Module):
    """A boundary-value problem for the pair y = (x, p), both of shape (dim,).

    Subclasses provide:

    - `dim`: the size of x (and of p).
    - `vector_field(t, y, args) -> (ẋ, ṗ)`: a diffrax vector field on the pair.
    - `node_times()`: the times [t_0, τ_1, …, τ_{K−1}, t_1] (increasing), the interior ones
      being where `jump` acts. Their number is static; their values may be traced.
    - `boundary_residual(y0, y1)`: the 2·dim residuals of the boundary conditions.

    and may override `jump(k, y)` (the map at interior node k; default: none),
    `initial_guess(t)` (default: zeros) and `hamiltonian(t, x, p)`.
    """

    dim: eqx.AbstractVar[int]

    @abc.abstractmethod
    def vector_field(self, t: ArrayLike, y: _Pair, args: PyTree) -> _Pair:
        """The canonical equations (ẋ, ṗ) at time `t`."""

    @abc.abstractmethod
    def node_times(self) -> Float[Array, " n_nodes"]:
        """The interval ends and the interior jump times, increasing."""

    @abc.abstractmethod
    def boundary_residual(self, y0: _Pair, y1: _Pair) -> Float[Array, " 2*dim"]:
        """The boundary conditions b(y(t_0), y(t_1)), zero at a solution."""

    def jump(self, k: Int[ArrayLike, ""], y: _Pair) -> _Pair:
        """The state just after interior node `k` (1 ≤ k ≤ K−1), from the state just before."""
        del k
        return y

    def initial_guess(self, t: ArrayLike) -> _Pair:
        """The default starting guess y(t) for Newton's method."""
        dtype = jnp.result_type(self.node_times())
        zero = jnp.zeros(self.dim, dtype) + 0 * jnp.asarray(t, dtype)
        return zero, zero

    def hamiltonian(self, t: ArrayLike, x: Array, p: Array) -> Scalar:
        """The Hamiltonian 𝓗(t, x, p), where the problem knows one."""
        raise NotImplementedError(f"{type(self).__name__} does not define a Hamiltonian.")


class BoundaryValueProblem(AbstractBoundaryValueProblem):
    """A user-specified boundary-value problem on the pair y = (x, p).

    **Arguments:**

    - `vector_field`: `f(t, (x, p), args) -> (ẋ, ṗ)`, e.g. from [`deepest.hamiltonian_field`][]
      or [`deepest.euler_lagrange`][] (then p stands for ẋ).
    - `boundary`: `b((x0, p0), (x1, p1)) -> residuals` of shape (2·dim,).
    - `t0`, `t1`: the interval, t0 < t1.
    - `dim`: the size of x.
    - `jump_times`: optional interior times τ_k (increasing, inside (t0, t1)).
    - `jump`: `jump(k, (x, p)) -> (x, p)` at τ_k, k = 1, 2, … (required with `jump_times`).
    - `guess`: optional default guess `t -> (x, p)`.
    - `hamiltonian`: optional `H(t, x, p)`, for diagnostics.

    **Example:**

        field = deepest.hamiltonian_field(lambda t, x, p: 0.5 * (p @ p) + jnp.cos(x).sum())
        bc = lambda y0, y1: jnp.concatenate([y0[0] - 0.5, y1[0] - 1.0])
        problem = deepest.BoundaryValueProblem(field, bc, 0.0, 1.0, dim=1)
        sol = deepest.solve_tpbvp(problem)
    """

    field: Callable
    boundary: Callable
    t0: Float[Array, ""]
    t1: Float[Array, ""]
    jump_times: Float[Array, " n_jumps"]
    jump_map: Callable | None
    guess: Callable | None
    hamiltonian_fn: Callable | None
    dim: int = eqx.field(static=True)

    def __init__(
        self,
        vector_field: Callable,
        boundary: Callable,
        t0: ArrayLike,
        t1: ArrayLike,
        dim: int,
        *,
        jump_times: ArrayLike = (),
        jump: Callable | None = None,
        guess: Callable | None = None,
        hamiltonian: Callable | None = None,
    ):
        if int(dim) != dim or dim < 1:
            raise ValueError(f"`dim` must be a positive integer; got {dim!r}.")
        dtype = jnp.result_type(float)
        t0 = jnp.asarray(t0, dtype)
        t1 = jnp.asarray(t1, dtype)
        jump_times = jnp.asarray(jump_times, dtype).reshape(-1)
        if _is_concrete((t0, t1, jump_times)):
            nodes = np.concatenate([[float(t0)], np.asarray(jump_times), [float(t1)]])
            if not np.all(np.isfinite(nodes)):
                raise ValueError("The interval ends and jump times must be finite.")
            if not float(t1) > float(t0):
                raise ValueError(f"Need t0 < t1 (a positive interval); got t0={t0}, t1={t1}.")
            if np.any(np.diff(nodes) <= 0):
                raise ValueError("`jump_times` must increase strictly and lie inside (t0, t1).")
        if jump_times.size > 0 and jump is None:
            raise ValueError("Pass `jump`, the map applied at each of the `jump_times`.")
        self.field = vector_field
        self.boundary = boundary
        self.t0 = t0
        self.t1 = t1
        self.jump_times = jump_times
        self.jump_map = jump
        self.guess = guess
        self.hamiltonian_fn = hamiltonian
        self.dim = int(dim)
        zero = jnp.zeros(self.dim, dtype)
        out = jax.eval_shape(boundary, (zero, zero), (zero, zero))
        if not hasattr(out, "shape") or out.shape != (2 * self.dim,):
            raise ValueError(
                f"`boundary` must return 2·dim = {2 * self.dim} residuals (one array of shape "
                f"({2 * self.dim},)); got {getattr(out, 'shape', out)}."
            )
        f_out = jax.eval_shape(vector_field, t0, (zero, zero), None)
        if jtu.tree_structure(f_out) != jtu.tree_structure((0, 0)) or any(
            leaf.shape != (self.dim,) for leaf in jtu.tree_leaves(f_out)
        ):
            raise ValueError(
                f"`vector_field(t, (x, p), args)` must return a pair (ẋ, ṗ) of shape "
                f"({self.dim},) each; got {f_out}."
            )

    def vector_field(self, t, y, args):
        return self.field(t, y, args)

    def node_times(self):
        return jnp.concatenate([self.t0[None], self.jump_times, self.t1[None]])

    def boundary_residual(self, y0, y1):
        return self.boundary(y0, y1)

    def jump(self, k, y):
        if self.jump_map is None:
            return y
        return self.jump_map(k, y)

    def initial_guess(self, t):
        if self.guess is None:
            return super().initial_guess(t)
        return self.guess(t)

    def hamiltonian(self, t, x, p):
        if self.hamiltonian_fn is None:
            return super().hamiltonian(t, x, p)
        return self.hamiltonian_fn(t, x, p)


# -------------------------------------------------------------------------------------------
# The solution
# -------------------------------------------------------------------------------------------


def _hermite(t0, t1, y0, y1, f0, f1, t):
    """Cubic Hermite interpolation on [t0, t1] (order 4), safe for t0 == t1."""
    h = t1 - t0
    safe_h = jnp.where(h > 0, h, 1)
    s = jnp.clip((t - t0) / safe_h, 0, 1)
    h00 = (1 + 2 * s) * (1 - s) ** 2
    h10 = s * (1 - s) ** 2
    h01 = s**2 * (3 - 2 * s)
    h11 = s**2 * (s - 1)
    return h00 * y0 + h10 * h * f0 + h01 * y1 + h11 * h * f1


class TPBVPResults(optx.RESULTS):
    """The result codes of [`deepest.solve_tpbvp`][]: optimistix's, plus one for mesh
    refinement."""

    max_nodes_reached = (
        "The collocation mesh reached `max_nodes` before every interval's residual fell "
        "below `tol`."
    )


class TPBVPSolution(eqx.Module):
    """The solution of [`deepest.solve_tpbvp`][].

    **Fields:**

    - `ts`: the output times (N,). Segment boundaries appear twice: the state just before
      and just after it (they differ across an interior jump).
    - `xs`, `ps`: the states x(t) and momenta p(t) at `ts`, (N, dim) each.
    - `dxs`, `dps`: ẋ and ṗ at `ts` (used for dense output).
    - `residual_norm`: the max-norm of the final Newton residual (continuity, boundary and,
      for collocation, stage equations).
    - `result`: a [`deepest.TPBVPResults`][] code (optimistix's codes, promoted):
      `successful` when Newton converged to a finite root (and, for a refining
      [`deepest.Collocation`][], every interval met `tol`); `max_nodes_reached` when the
      collocation mesh filled up first (the solution on the full mesh is returned).
    - `n_newton`: the number of Newton iterations taken (over all meshes).
    - `n_nodes`: the mesh nodes used (collocation: the active nodes of the refined mesh;
      shooting: the segment boundaries).

    `sol.evaluate(t)` gives (x(t), p(t)) by cubic Hermite interpolation (right limit at a
    jump time); it works for scalar `t` and, vmapped, for arrays of times.
    """

    ts: Float[Array, " n"]
    xs: Float[Array, "n dim"]
    ps: Float[Array, "n dim"]
    dxs: Float[Array, "n dim"]
    dps: Float[Array, "n dim"]
    residual_norm: Float[Array, ""]
    result: TPBVPResults
    n_newton: Int[Array, ""]
    n_nodes: Int[Array, ""]

    @property
    def converged(self) -> Array:
        """Whether Newton converged (a boolean array)."""
        return self.result == TPBVPResults.successful

    def evaluate(self, t: Float[ArrayLike, ""]) -> _Pair:
        """(x(t), p(t)) by cubic Hermite interpolation between the stored states."""
        t = jnp.asarray(t, self.ts.dtype)
        n = self.ts.shape[0]
        i = jnp.clip(jnp.searchsorted(self.ts, t, side="right") - 1, 0, n - 2)
        args = (self.ts[i], self.ts[i + 1])
        x = _hermite(*args, self.xs[i], self.xs[i + 1], self.dxs[i], self.dxs[i + 1], t)
        p = _hermite(*args, self.ps[i], self.ps[i + 1], self.dps[i], self.dps[i + 1], t)
        return x, p

    def integrate(self, integrand: Callable, order: int = 3) -> PyTree[Array]:
        """∫ g(t, x(t), p(t)) dt along the solution, Gauss–Legendre (`order` points) on each
        output interval of the Hermite interpolant; `g` may return any pytree of arrays."""
        nodes, weights = np.polynomial.legendre.leggauss(order)
        dtype = self.ts.dtype
        nodes = jnp.asarray((nodes + 1) / 2, dtype)
        weights = jnp.asarray(weights / 2, dtype)

        def on_interval(i):
            t0, t1 = self.ts[i], self.ts[i + 1]
            h = t1 - t0

            def at(s, w):
                t = t0 + s * h
                x = _hermite(t0, t1, self.xs[i], self.xs[i + 1], self.dxs[i], self.dxs[i + 1], t)
                p = _hermite(t0, t1, self.ps[i], self.ps[i + 1], self.dps[i], self.dps[i + 1], t)
                return jtu.tree_map(lambda g: (w * h) * g, integrand(t, x, p))

            return jtu.tree_map(lambda g: jnp.sum(g, axis=0), jax.vmap(at)(nodes, weights))

        per_interval = jax.vmap(on_interval)(jnp.arange(self.ts.shape[0] - 1))
        return jtu.tree_map(lambda g: jnp.sum(g, axis=0), per_interval)


# -------------------------------------------------------------------------------------------
# Integration of one segment with a diffrax solver
# -------------------------------------------------------------------------------------------


def _with_stage_loop(solver: diffrax.AbstractSolver, forward_only: bool):
    """A Runge–Kutta solver whose stage loop supports the autodiff modes needed.

    Newton's iterations need forward mode only, where a plain `lax` loop is ~5x faster;
    the implicit-function correction and the dense output need reverse mode too
    (`bounded`).
    """
    if isinstance(solver, diffrax.AbstractRungeKutta) and solver.scan_kind is None:
        return dataclasses.replace(solver, scan_kind="lax" if forward_only else "bounded")
    return solver


def _fixed_flow(solver, term, ta, tb, y, args, steps):
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


def _adaptive_flow(solver, controller, max_steps, term, ta, tb, y, args, n_save):
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


# -------------------------------------------------------------------------------------------
# Methods
# -------------------------------------------------------------------------------------------


def _default_root_finder(dtype) -> optx.AbstractRootFinder:
    tol = 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5
    return optx.Newton(rtol=tol, atol=tol, linear_solver=lx.LU())


class AbstractTPBVPMethod(eqx.Module):
    """A discretisation of a boundary-value problem for [`deepest.solve_tpbvp`][]:
    [`deepest.MultipleShooting`][], [`deepest.Shooting`][] or [`deepest.Collocation`][]."""

    max_newton_steps: eqx.AbstractVar[int]


def _segment_times(nodes: Float[Array, " n_nodes"], pieces: int):
    frac = jnp.arange(pieces, dtype=nodes.dtype) / pieces
    ta = (nodes[:-1, None] + (nodes[1:] - nodes[:-1])[:, None] * frac).reshape(-1)
    tb = jnp.concatenate([ta[1:], nodes[-1:]])
    return ta, tb


class _ShootingBase(AbstractTPBVPMethod):
    """Shooting methods: each interval between consecutive nodes is cut into `pieces` equal
    segments; the unknowns are the states at segment starts, solved by optimistix."""

    root_finder: eqx.AbstractVar[optx.AbstractRootFinder | optx.AbstractLeastSquaresSolver | None]
    solver: eqx.AbstractVar[diffrax.AbstractSolver]
    stepsize_controller: eqx.AbstractVar[diffrax.AbstractStepSizeController | None]
    max_steps: eqx.AbstractVar[int]
    forward_only: eqx.AbstractVar[bool]

    @property
    @abc.abstractmethod
    def pieces(self) -> int:
        """Segments per interval between nodes."""

    @abc.abstractmethod
    def unknowns_from(self, guess: Callable, ta, tb) -> PyTree[Array]:
        """The Newton unknowns sampled from a guess `t -> (x, p)`."""

    @abc.abstractmethod
    def segment_ends(self, problem, ta, tb, unknowns) -> tuple[_Pair, PyTree[Array]]:
        """(states at the segment ends, extra residuals)."""

    @abc.abstractmethod
    def dense(self, problem, ta, tb, unknowns) -> tuple[Array, _Pair]:
        """Output times (segments concatenated) and states there."""

    @property
    @abc.abstractmethod
    def steps(self) -> int:
        """Fixed steps (or dense points) per segment."""

    def _flow(self, problem, ta, tb, y):
        term = diffrax.ODETerm(problem.vector_field)
        solver = _with_stage_loop(self.solver, forward_only=False)
        if self.stepsize_controller is None:
            return _fixed_flow(solver, term, ta, tb, y, None, self.steps)
        return _adaptive_flow(
            solver,
            self.stepsize_controller,
            self.max_steps,
            term,
            ta,
            tb,
            y,
            None,
            self.steps,
        )

    def _end(self, problem, ta, tb, y):
        if self.forward_only:
            dynamic, static = eqx.partition(problem, eqx.is_inexact_array)
            return _end_with_sensitivity(self, static, dynamic, ta, tb, y)
        return self._integrate_end(problem, ta, tb, y)

    def _integrate_end(self, problem, ta, tb, y):
        term = diffrax.ODETerm(problem.vector_field)
        solver = _with_stage_loop(self.solver, self.forward_only)
        if self.stepsize_controller is None:
            ys = _fixed_flow(solver, term, ta, tb, y, None, self.steps)
            return jtu.tree_map(lambda a: a[-1], ys)
        sol = diffrax.diffeqsolve(
            term,
            solver,
            ta,
            tb,
            (tb - ta) / self.steps,
            y,
            stepsize_controller=self.stepsize_controller,
            adjoint=diffrax.ForwardMode() if self.forward_only else diffrax.DirectAdjoint(),
            max_steps=self.max_steps,
            throw=False,
        )
        ok = sol.result == diffrax.RESULTS.successful
        return jtu.tree_map(lambda a: jnp.where(ok, a[-1], jnp.nan), sol.ys)

    def _check(self):
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"The number of steps per segment must be ≥ 1; got {self.steps}.")
        if self.max_newton_steps < 1:
            raise ValueError(f"`max_newton_steps` must be ≥ 1; got {self.max_newton_steps}.")
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


class MultipleShooting(_ShootingBase):
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

        method = deepest.MultipleShooting(8, deepest.integrators.GaussLegendre(),
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

    @property
    def steps(self):
        return self.steps_per_segment

    def __check_init__(self):
        if int(self.n_segments) != self.n_segments or self.n_segments < 1:
            raise ValueError(f"`n_segments` must be a positive integer; got {self.n_segments}.")
        self._check()

    @property
    def pieces(self):
        return self.n_segments

    def unknowns_from(self, guess, ta, tb):
        return jax.vmap(guess)(ta)

    def segment_ends(self, problem, ta, tb, starts):
        ends = jax.vmap(lambda a, b, y: self._end(problem, a, b, y))(ta, tb, starts)
        return ends, ()

    def dense(self, problem, ta, tb, starts):
        ys = jax.vmap(lambda a, b, y: self._flow(problem, a, b, y))(ta, tb, starts)
        frac = jnp.linspace(0, 1, self.steps + 1, dtype=ta.dtype)
        ts = (ta[:, None] + (tb - ta)[:, None] * frac).reshape(-1)
        return ts, jtu.tree_map(lambda a: a.reshape(-1, a.shape[-1]), ys)


class Shooting(_ShootingBase):
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

    @property
    def steps(self):
        return self.steps_per_interval

    def __check_init__(self):
        self._check()

    @property
    def pieces(self):
        return 1

    def unknowns_from(self, guess, ta, tb):
        return guess(ta[0])

    def _sweep(self, problem, ta, tb, y0, dense):
        n = ta.shape[0]

        def body(y, inputs):
            k, a, b = inputs
            ys = self._flow(problem, a, b, y) if dense else None
            end = jtu.tree_map(lambda u: u[-1], ys) if dense else self._end(problem, a, b, y)
            jumped = problem.jump(jnp.minimum(k + 1, n - 1), end)
            after = _tree_where(k + 1 < n, jumped, end)
            return after, (ys, end)

        _, (ys, ends) = jax.lax.scan(body, y0, (jnp.arange(n), ta, tb))
        return ys, ends

    def segment_ends(self, problem, ta, tb, y0):
        _, ends = self._sweep(problem, ta, tb, y0, dense=False)
        # Only the last end enters a residual; earlier ends are continuous by construction.
        return jtu.tree_map(lambda a: a[-1:], ends), ()

    def dense(self, problem, ta, tb, y0):
        ys, _ = self._sweep(problem, ta, tb, y0, dense=True)
        frac = jnp.linspace(0, 1, self.steps + 1, dtype=ta.dtype)
        ts = (ta[:, None] + (tb - ta)[:, None] * frac).reshape(-1)
        return ts, jtu.tree_map(lambda a: a.reshape(-1, a.shape[-1]), ys)


# Lobatto IIIA (for x) and IIIB (for p), 3 stages: c = (0, ½, 1), b = (1/6, 2/3, 1/6).
# HLW (Geometric Numerical Integration) II.2.2 and VI.4: the pair satisfies
# b_i â_ij + b_j a_ji = b_i b_j, so it is symplectic for any Hamiltonian, and has order 4.
_LOBATTO_C = np.array([0.0, 0.5, 1.0])
_LOBATTO_B = np.array([1 / 6, 2 / 3, 1 / 6])
_LOBATTO_A = np.array([[0, 0, 0], [5 / 24, 1 / 3, -1 / 24], [1 / 6, 2 / 3, 1 / 6]])
_LOBATTO_AHAT = np.array([[1 / 6, -1 / 6, 0], [1 / 6, 1 / 3, 0], [1 / 6, 5 / 6, 0]])

# The interior points of 5-point Lobatto quadrature on [0, 1] and their weights (the end
# points carry no residual): scipy's `solve_bvp` estimates the rms residual with them.
_RMS_POINTS = np.array([0.5 - 0.5 * np.sqrt(3 / 7), 0.5, 0.5 + 0.5 * np.sqrt(3 / 7)])
_RMS_WEIGHTS = np.array([49 / 90, 32 / 45, 49 / 90])


class Collocation(AbstractTPBVPMethod):
    r"""Collocation with the Lobatto IIIA–IIIB pair (3 stages, order 4, symplectic), with
    residual-controlled mesh refinement on a fixed maximal mesh.

    On each mesh interval [t_n, t_n + h], with stage times t_n + c_i h, c = (0, ½, 1),

        X_i = x_n + h Σ_j a_ij ẋ(X_j, P_j),   P_i = p_n + h Σ_j â_ij ṗ(X_j, P_j),
        x_{n+1} = X_3,   p_{n+1} = p_n + h Σ_j b_j ṗ(X_j, P_j),

    with a from Lobatto IIIA and â from Lobatto IIIB (HLW, *Geometric Numerical
    Integration*, II.2.2 and VI.4). The 3-stage pair has order 4, the order of scipy's
    `solve_bvp`, so equal accuracy needs a mesh of similar size.

    **The Newton system, solved with its structure.** The unknowns are the node states
    y_n = (x_n, p_n) and the stages Z_n = (X_2, X_3, P_1, P_2, P_3) of each interval. The
    Jacobian is assembled per interval from the vector field's Jacobian at the stages;
    each interval's stage equations are condensed locally (a batched 5·dim Gauss–Jordan
    sweep), which leaves δy_{n+1} = S_n δy_n + r_n; the products S_n ⋯ S_0 and the
    accumulated r_n come from scans of small matrix products, and the boundary conditions
    close a 2·dim system for δy_0. Apart from those scans every operation is vectorised
    over the intervals: a Newton step costs O(n) small-block work, not a dense LU of the
    whole system. The factorisation is reused
    while the steps contract well (simplified Newton, as scipy's `solve_bvp` reuses its
    Jacobian), so near the root a step costs one residual evaluation. (The condensed
    recursion carries the flow's sensitivity across [t_0, t_1], as single shooting does:
    for long, strongly unstable horizons prefer [`deepest.MultipleShooting`][].) A
    solution on a coarser mesh, passed as `guess`, starts Newton near the root (nested
    iteration), which saves the expensive first iterations on a fine mesh.

    **Mesh refinement inside `jit`.** The mesh has `max_nodes` nodes fixed at trace time;
    the first ones are active, the rest sit at t_1, where their zero-length intervals reduce
    to identities, so shapes never change. With a `tol`, after Newton converges the rms of
    the relative collocation residual (ẏ − f)/(1 + |f|) of the cubic Hermite interpolant is
    estimated on each interval by 5-point Lobatto quadrature, and intervals above `tol` are
    split in two (or in three above 100·tol), as scipy's `solve_bvp` does (Kierzenka &
    Shampine 2001); Newton restarts from the interpolated solution, until every interval
    passes or the mesh is full (then the result is `TPBVPResults.max_nodes_reached`).
    Different problems in a `vmap` refine to different active node counts. Without a
    `tol` the mesh stays uniform.

    **Arguments:**

    - `n_nodes`: initial mesh nodes per interval between consecutive problem nodes (≥ 2),
      uniformly spaced.
    - `tol`: the rms relative residual each interval must reach (default `None`: no
      refinement).
    - `max_nodes`: the maximal number of mesh nodes (default: the initial mesh, or eight
      times as many intervals with a `tol`).
    - `newton_tol`: Newton stops when every update satisfies |δ| ≤ newton_tol·(1 + |u|)
      (default 1e-10 in float64, 1e-5 in float32).

    Derivatives with respect to the problem's arrays come from the implicit function
    theorem at the root (the Jacobian is factorised there only when differentiating). The
    refined mesh is held fixed in relative position (its nodes follow the problem's node
    times): the choice of mesh is piecewise constant in the problem.
    - `max_newton_steps`: Newton iterations per mesh before giving up.

    **Example:**

        sol = deepest.solve_tpbvp(problem, deepest.Collocation(9, tol=1e-6, max_nodes=257))
        print(sol.n_nodes, sol.result)
    """

    n_nodes: int = eqx.field(default=33, static=True)
    tol: float | None = eqx.field(default=None, static=True)
    max_nodes: int | None = eqx.field(default=None, static=True)
    newton_tol: float | None = eqx.field(default=None, static=True)
    max_newton_steps: int = eqx.field(default=32, static=True)

    def __check_init__(self):
        if int(self.n_nodes) != self.n_nodes or self.n_nodes < 2:
            raise ValueError(f"`n_nodes` must be an integer ≥ 2; got {self.n_nodes}.")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"`tol` must be positive (or None: no refinement); got {self.tol}.")
        if self.max_nodes is not None and (
            int(self.max_nodes) != self.max_nodes or self.max_nodes < self.n_nodes
        ):
            raise ValueError(
                f"`max_nodes` must be an integer ≥ n_nodes = {self.n_nodes}; got {self.max_nodes}."
            )
        if self.newton_tol is not None and not self.newton_tol > 0:
            raise ValueError(f"`newton_tol` must be positive; got {self.newton_tol}.")
        if self.max_newton_steps < 1:
            raise ValueError(f"`max_newton_steps` must be ≥ 1; got {self.max_newton_steps}.")

    def mesh_size(self, n_problem_nodes: int) -> tuple[int, int]:
        """(initial active intervals, maximal intervals) for a problem with that many nodes."""
        initial = (n_problem_nodes - 1) * (self.n_nodes - 1)
        if self.max_nodes is not None:
            maximal = self.max_nodes - 1
        else:
            maximal = 8 * initial if self.tol is not None else initial
        if maximal < initial:
            raise ValueError(
                f"`max_nodes` = {self.max_nodes} cannot hold the initial mesh of "
                f"{initial + 1} nodes ({self.n_nodes} per interval between the problem's "
                f"{n_problem_nodes} nodes); raise `max_nodes` or lower `n_nodes`."
            )
        return initial, maximal


class _Mesh(eqx.Module):
    """A mesh on the problem's node intervals: node i at t = τ_{j_i} + s_i (τ_{j_i+1} − τ_{j_i}).

    Storing (j, s) rather than t keeps the times differentiable in the problem's node times.
    The node at an interior τ_j is (j, 0); inactive nodes are (K − 2, 1) = t_1.
    """

    interval: Int[Array, " n"]
    fraction: Float[Array, " n"]
    n_active: Int[Array, ""]

    def times(self, nodes):
        return nodes[self.interval] + self.fraction * (
            nodes[self.interval + 1] - nodes[self.interval]
        )

    def jump_index(self):
        """k_n ≥ 1 where interval n ends at interior problem node τ_k (then p jumps), else 0."""
        j, s = self.interval[1:], self.fraction[1:]
        return jnp.where((s == 0) & (j >= 1), j, 0)


def _initial_mesh(n_problem_nodes, pieces, n_intervals, dtype):
    k = n_problem_nodes - 1
    active = k * pieces
    interval = np.full(n_intervals + 1, k - 1)
    fraction = np.ones(n_intervals + 1)
    interval[:active] = np.repeat(np.arange(k), pieces)
    fraction[:active] = np.tile(np.arange(pieces) / pieces, k)
    return _Mesh(jnp.asarray(interval), jnp.asarray(fraction, dtype), jnp.asarray(active))


def _flat(y: _Pair) -> Array:
    return jnp.concatenate(y, axis=-1)


def _pair(v: Array, dim: int) -> _Pair:
    return v[..., :dim], v[..., dim:]


def _lobatto_stages(dim: int, y, z):
    """One interval's stage states X_1..3 (X_1 = x_n) and P_1..3, each (3, dim)."""
    x = y[:dim]
    return jnp.stack([x, z[:dim], z[dim : 2 * dim]]), z[2 * dim :].reshape(3, dim)


def _lobatto_combine(h, y, big_x, big_p, f, g):
    """Stage residuals (5·dim) and the end state before any jump (2·dim) of one interval,
    from its stages and the vector field there (f = ẋ, g = ṗ, each (3, dim))."""
    a, ahat, b = (jnp.asarray(m, y.dtype) for m in (_LOBATTO_A, _LOBATTO_AHAT, _LOBATTO_B))
    x, p = _pair(y, big_x.shape[-1])
    res_x = big_x[1:] - x - h * (a[1:] @ f)
    res_p = big_p - p - h * (ahat @ g)
    end = jnp.concatenate([big_x[2], p + h * (b @ g)])
    return jnp.concatenate([res_x.reshape(-1), res_p.reshape(-1)]), end


def _lobatto_interval(problem, ta, h, y, z):
    """Stage residuals (5·dim) and the end state before any jump (2·dim) of one interval."""
    big_x, big_p = _lobatto_stages(problem.dim, y, z)
    c = jnp.asarray(_LOBATTO_C, y.dtype)
    f, g = jax.vmap(lambda t, xi, pi: problem.vector_field(t, (xi, pi), None))(
        ta + h * c, big_x, big_p
    )
    return _lobatto_combine(h, y, big_x, big_p, f, g)


def _apply_jump(problem, has_jumps, k, end):
    if not has_jumps:
        return end
    jumped = _flat(problem.jump(jnp.maximum(k, 1), _pair(end, problem.dim)))
    return jnp.where(k > 0, jumped, end)


def _residual_and_ends(problem, mesh, nodes, has_jumps, ys, zs):
    """The residuals (as `_collocation_residual`) and each interval's end state before any
    jump (n, 2·dim)."""
    t = mesh.times(nodes)
    stage, ends = jax.vmap(lambda ta, h, y, z: _lobatto_interval(problem, ta, h, y, z))(
        t[:-1], t[1:] - t[:-1], ys[:-1], zs
    )
    jumped = jax.vmap(lambda k, e: _apply_jump(problem, has_jumps, k, e))(mesh.jump_index(), ends)
    d = problem.dim
    boundary = problem.boundary_residual(_pair(ys[0], d), _pair(ys[-1], d))
    return (stage, jumped - ys[1:], boundary), ends


def _collocation_residual(problem, mesh, nodes, has_jumps, ys, zs):
    """(stage residuals (n, 5·dim), continuity residuals (n, 2·dim), boundary (2·dim))."""
    return _residual_and_ends(problem, mesh, nodes, has_jumps, ys, zs)[0]


def _constant_blocks(dim: int) -> np.ndarray:
    """The part of an interval's Jacobian that does not involve the vector field.

    Rows: the stage residuals of X_2, X_3, P_1, P_2, P_3, then the end state (x, p) before
    any jump; columns: x_n, p_n, X_2, X_3, P_1, P_2, P_3 (blocks of dim × dim).
    """
    k = np.zeros((7, 7))
    k[0, 0] = k[1, 0] = -1  # X_i − x_n − …
    k[0, 2] = k[1, 3] = 1
    k[2:5, 1] = -1  # P_i − p_n − …
    k[2, 4] = k[3, 5] = k[4, 6] = 1
    k[5, 3] = 1  # the end's x is X_3
    k[6, 1] = 1  # the end's p is p_n + h Σ b_j ṗ_j
    return np.kron(k, np.eye(dim))


def _collocation_jacobian(problem, mesh, nodes, has_jumps, ys, zs):
    """The residuals and the blocks of their Jacobian, per interval.

    Assembled from the vector field's Jacobian at the 3 stages of every interval (one
    vmapped `jacfwd` with 2·dim tangents) and the Lobatto coefficients: the stage residuals
    are linear in the stage fields, so differentiating the whole interval map (7·dim
    tangents through three field evaluations) would repeat that work 3.5 times over.
    """
    d = problem.dim
    dtype = ys.dtype
    a, ahat, b, c = (
        jnp.asarray(m, dtype) for m in (_LOBATTO_A, _LOBATTO_AHAT, _LOBATTO_B, _LOBATTO_C)
    )
    t = mesh.times(nodes)
    ta, h = t[:-1], t[1:] - t[:-1]
    n = h.shape[0]
    big_x, big_p = jax.vmap(lambda y, z: _lobatto_stages(d, y, z))(ys[:-1], zs)  # (n, 3, dim)

    def field(t, y):
        out = _flat(problem.vector_field(t, _pair(y, d), None))
        return out, out

    jac_field, fields = jax.vmap(jax.vmap(jax.jacfwd(field, argnums=1, has_aux=True)))(
        ta[:, None] + h[:, None] * c, jnp.concatenate([big_x, big_p], axis=-1)
    )
    stage, ends = jax.vmap(_lobatto_combine)(
        h, ys[:-1], big_x, big_p, fields[..., :d], fields[..., d:]
    )

    # Rows of kind x take −h a_ij ∂ẋ_j; rows of kind p take −h â_ij ∂ṗ_j (stages) and
    # h b_j ∂ṗ_j (the end's p); the end's x takes none.
    dx = jnp.einsum("nij,njak->niajk", -h[:, None, None] * a[1:], jac_field[:, :, :d])
    coeff_p = h[:, None, None] * jnp.concatenate([-ahat, b[None]])
    dp = jnp.einsum("nij,njak->niajk", coeff_p, jac_field[:, :, d:])
    none = jnp.zeros((n, 1, d, 3, 2 * d), dtype)
    rows = jnp.concatenate([dx, dp[:, :3], none, dp[:, 3:]], axis=1)
    # Columns (stage j, x or p) → X_1, X_2, X_3, P_1, P_2, P_3, where X_1 is x_n.
    stage_cols = jnp.swapaxes(rows.reshape(n, 7 * d, 3, 2, d), 2, 3).reshape(n, 7 * d, 6 * d)
    zero = jnp.zeros((n, 7 * d, d), dtype)
    jac = jnp.concatenate([stage_cols[..., :d], zero, stage_cols[..., d:]], axis=-1)
    jac = jac + jnp.asarray(_constant_blocks(d), dtype)
    if has_jumps:

        def jump(k, end):
            out = _apply_jump(problem, has_jumps, k, end)
            return out, out

        jac_jump, ends = jax.vmap(jax.jacfwd(jump, argnums=1, has_aux=True))(
            mesh.jump_index(), ends
        )
        jac = jnp.concatenate([jac[:, : 5 * d], jac_jump @ jac[:, 5 * d :]], axis=1)

    def boundary(v):
        out = problem.boundary_residual(_pair(v[: 2 * d], d), _pair(v[2 * d :], d))
        return out, out

    bjac, bres = jax.jacfwd(boundary, has_aux=True)(jnp.concatenate([ys[0], ys[-1]]))
    return (stage, ends - ys[1:], bres), (jac, bjac)


class _Factors(eqx.Module):
    """The structured factorisation of the collocation Jacobian (see `_factorise`)."""

    inv_gz: Array  # G_z⁻¹ per interval
    inv_gz_gy: Array  # G_z⁻¹ G_y per interval
    e_z: Array  # ∂(continuity)/∂Z per interval
    s: Array  # S_n: δy_{n+1} = S_n δy_n + r_n
    phi: Array  # Φ_n = S_n ⋯ S_0: δy_{n+1} = Φ_n δy_0 + ψ_{n+1}
    b1: Array  # ∂(boundary)/∂y_N
    inv_m: Array  # (B_0 + B_1 Φ_N)⁻¹


def _factorise(blocks, dim) -> _Factors:
    """Factorise the Newton matrix J with its structure.

    Stage equations g_n + G_y δy_n + G_z δZ_n = 0 give δZ_n = −G_z⁻¹(g_n + G_y δy_n) (a
    local sweep per interval, batched); continuity c_n + E_y δy_n + E_z δZ_n − δy_{n+1} = 0
    then reads δy_{n+1} = S_n δy_n + r_n with S_n = E_y − E_z G_z⁻¹ G_y. The products
    Φ_n = S_n ⋯ S_0 come from one `lax.scan` (its steps are single small matrix products,
    cheaper on CPU than the log-depth doubling with batched products), and the boundary
    conditions B_0 δy_0 + B_1 δy_N = −b close the system.
    """
    jac, bjac = blocks
    s5, s2 = 5 * dim, 2 * dim
    g_y, g_z = jac[:, :s5, :s2], jac[:, :s5, s2:]
    e_y, e_z = jac[:, s5:, :s2], jac[:, s5:, s2:]
    # No pivoting: the stage matrices G_z are I − O(h ‖∂f/∂y‖), diagonally dominant on any
    # mesh that resolves the solution; a zero pivot gives non-finite values, which Newton
    # reports (`TPBVPResults.nonfinite`) and mesh refinement does not hide.
    local = gauss_jordan(jnp.concatenate([g_z, g_y], axis=-1), s5)
    inv_gz, inv_gz_gy = local[..., :s5], local[..., s5:]
    s = e_y - e_z @ inv_gz_gy

    def product(phi, s_n):
        phi = s_n @ phi
        return phi, phi

    _, phi = jax.lax.scan(product, jnp.eye(s2, dtype=s.dtype), s)
    b0, b1 = bjac[:, :s2], bjac[:, s2:]
    inv_m = jnp.linalg.inv(b0 + b1 @ phi[-1])
    return _Factors(inv_gz, inv_gz_gy, e_z, s, phi, b1, inv_m)


def _apply_factors(factors: _Factors, residual):
    """The Newton step δ = −J⁻¹ R from the factorisation (linear in R)."""
    stage, continuity, boundary = residual
    inv_g = jnp.einsum("nij,nj->ni", factors.inv_gz, stage)
    r = continuity - jnp.einsum("nij,nj->ni", factors.e_z, inv_g)

    def accumulate(psi, inputs):
        s_n, r_n = inputs
        psi = s_n @ psi + r_n
        return psi, psi

    psi_end, psi = jax.lax.scan(accumulate, jnp.zeros_like(r[0]), (factors.s, r))
    dy0 = factors.inv_m @ (-boundary - factors.b1 @ psi_end)
    dys = jnp.concatenate([dy0[None], factors.phi @ dy0 + psi])
    dzs = -(inv_g + jnp.einsum("nij,nj->ni", factors.inv_gz_gy, dys[:-1]))
    return dys, dzs


def _newton(problem, mesh, nodes, has_jumps, ys, zs, factors, tol, max_steps):
    """Newton's method on one mesh, reusing the factorised Jacobian while it contracts well.

    A fresh Jacobian is factorised at the first iteration and whenever the previous step
    shrank by less than a factor 4 (simplified Newton otherwise, as scipy's `solve_bvp`
    also reuses its Jacobian): near the root a step then costs one residual evaluation.

    Why not `optimistix.root_find`: `optx.Newton` refactorises every step and `optx.Chord`
    never does; neither has this reuse-while-contracting rule, and the solve's cost is
    mostly fresh factorisations (measured on the benchmark problems, 2-core CPU: a fresh
    step ≈ 0.1 ms for the pendulum on 32 intervals and ≈ 0.2 ms for Lorenz-63 on 60, a
    reusing step ≈ 0.02–0.05 ms; to a step of 1e-8 the pendulum takes 1 fresh + 6
    reusing steps where full Newton takes 4 fresh ones, Lorenz-63 from its default guess
    3 fresh + 7 reusing against 6 fresh). Passing the structured factorisation through
    lineax would also need a custom operator and solver around the same code.

    **Returns:** `(ys, zs, factors, result, steps)`.
    """

    def cond(carry):
        step, *_, done, _ = carry
        return (step < max_steps) & ~done

    def body(carry):
        step, ys, zs, factors, refactor, last, _, _ = carry

        def fresh(_):
            residual, blocks = _collocation_jacobian(problem, mesh, nodes, has_jumps, ys, zs)
            return residual, _factorise(blocks, problem.dim)

        def reuse(factors):
            return _collocation_residual(problem, mesh, nodes, has_jumps, ys, zs), factors

        residual, factors = jax.lax.cond(refactor, fresh, reuse, factors)
        dys, dzs = _apply_factors(factors, residual)
        ys, zs = ys + dys, zs + dzs
        size = jnp.maximum(
            jnp.max(jnp.abs(dys) / (1 + jnp.abs(ys))), jnp.max(jnp.abs(dzs) / (1 + jnp.abs(zs)))
        )
        finite = jnp.isfinite(size)
        # A lane that turned non-finite stops at once (it would hold a vmapped batch).
        done = (size <= tol) | ~finite
        return step + 1, ys, zs, factors, size > 0.25 * last, size, done, finite

    inf = jnp.asarray(jnp.inf, ys.dtype)
    init = (jnp.array(0), ys, zs, factors, jnp.array(True), inf, jnp.array(False), jnp.array(True))
    steps, ys, zs, factors, _, _, done, finite = jax.lax.while_loop(cond, body, init)
    result = TPBVPResults.where(
        done, TPBVPResults.successful, TPBVPResults.nonlinear_max_steps_reached
    )
    result = TPBVPResults.where(finite, result, TPBVPResults.nonfinite)
    return ys, zs, factors, result, steps


@eqx.filter_custom_jvp
def _at_root(dynamic, static, mesh, has_jumps, ys, zs):
    """The root (ys, zs) of the collocation equations, as a function of the problem.

    Its value is the root found by Newton; its derivative is the implicit function
    theorem's, δu = −J⁻¹ (∂R/∂θ) δθ, with J factorised at the root (only when differentiated,
    so the solve itself pays nothing for it).
    """
    del dynamic, static, mesh, has_jumps
    return ys, zs


@_at_root.def_jvp
def _at_root_jvp(primals, tangents):
    dynamic, static, mesh, has_jumps, ys, zs = primals
    # Symbolic-zero tangents (None) of the problem's arrays, made explicit for `jax.jvp`.
    t_dynamic = jtu.tree_map(
        lambda p, t: p if p is None else (jnp.zeros_like(p) if t is None else t),
        dynamic,
        tangents[0],
        is_leaf=lambda x: x is None,
    )

    def residual(d):
        problem = eqx.combine(d, static)
        return _collocation_residual(problem, mesh, problem.node_times(), has_jumps, ys, zs)

    _, d_residual = jax.jvp(residual, (dynamic,), (t_dynamic,))
    problem = eqx.combine(dynamic, static)
    _, blocks = _collocation_jacobian(problem, mesh, problem.node_times(), has_jumps, ys, zs)
    factors = _factorise(blocks, problem.dim)
    return (ys, zs), _apply_factors(factors, d_residual)


def _hermite_pieces(s, h, y0, y1, f0, f1):
    """The cubic Hermite interpolant on an interval and its time derivative at fraction s."""
    h00, h10 = (1 + 2 * s) * (1 - s) ** 2, s * (1 - s) ** 2
    h01, h11 = s**2 * (3 - 2 * s), s**2 * (s - 1)
    value = h00 * y0 + h10 * h * f0 + h01 * y1 + h11 * h * f1
    d00, d10 = 6 * s**2 - 6 * s, 3 * s**2 - 4 * s + 1
    d01, d11 = 6 * s - 6 * s**2, 3 * s**2 - 2 * s
    slope = (d00 * y0 + d01 * y1) / jnp.where(h > 0, h, 1) + d10 * f0 + d11 * f1
    return value, slope


def _interval_ends(problem, mesh, nodes, ys, zs):
    """Per interval: start time, length, start state, end state before any jump, and ẏ there."""
    t = mesh.times(nodes)
    ta, h = t[:-1], t[1:] - t[:-1]
    _, ends = jax.vmap(lambda a, b, y, z: _lobatto_interval(problem, a, b, y, z))(
        ta, h, ys[:-1], zs
    )
    d = problem.dim

    def field(t, y):
        return _flat(problem.vector_field(t, _pair(y, d), None))

    return ta, h, ys[:-1], ends, jax.vmap(field)(ta, ys[:-1]), jax.vmap(field)(ta + h, ends)


def _rms_residuals(problem, ta, h, y0, y1, f0, f1):
    """scipy's estimate: rms over each interval of (S' − f(S))/(1 + |f(S)|), S the cubic
    Hermite interpolant, by 5-point Lobatto quadrature (zero at the ends)."""
    d = problem.dim
    dtype = y0.dtype

    def one(ta, h, y0, y1, f0, f1):
        def at(s):
            value, slope = _hermite_pieces(s, h, y0, y1, f0, f1)
            f = _flat(problem.vector_field(ta + s * h, _pair(value, d), None))
            return jnp.sum(((slope - f) / (1 + jnp.abs(f))) ** 2)

        squares = jax.vmap(at)(jnp.asarray(_RMS_POINTS, dtype))
        rms = jnp.sqrt(0.5 * jnp.sum(jnp.asarray(_RMS_WEIGHTS, dtype) * squares))
        return jnp.where(h > 0, rms, 0)

    return jax.vmap(one)(ta, h, y0, y1, f0, f1)


def _refine(mesh, intervals, ys, zs, pieces, d):
    """Split each interval into `pieces` (1: keep, 2: halve, 3: thirds); the solution is
    carried over by its cubic Hermite interpolant (unsplit intervals keep their stages)."""
    _, h, y0, y1, f0, f1 = intervals
    n = zs.shape[0]
    start_index = jnp.cumsum(pieces) - pieces
    j, s0 = mesh.interval[:-1], mesh.fraction[:-1]
    same = mesh.interval[1:] == j
    s1 = jnp.where(same, mesh.fraction[1:], 1)
    dtype = ys.dtype
    total = mesh.n_active + jnp.sum(pieces) - n

    end_y = ys[-1]
    end_z = jnp.concatenate([end_y[:d], end_y[:d], end_y[d:], end_y[d:], end_y[d:]])
    new_j = jnp.full(n + 1, mesh.interval[-1])
    new_s = jnp.ones(n + 1, dtype)
    new_ys = jnp.broadcast_to(end_y, ys.shape)
    new_zs = jnp.broadcast_to(end_z, zs.shape)
    width = 1 / pieces.astype(dtype)

    def interp(frac):
        return _hermite_pieces(frac[:, None], h[:, None], y0, y1, f0, f1)[0]

    for i in range(3):
        # Piece i of each interval lands at its new index (dropped where i ≥ pieces).
        index = jnp.where(i < pieces, start_index + i, n + 1)
        a = i * width
        start = y0 if i == 0 else interp(a)
        mid, end = interp(a + width / 2), interp(a + width)
        stage = jnp.concatenate(
            [mid[:, :d], end[:, :d], start[:, d:], mid[:, d:], end[:, d:]], axis=1
        )
        stage = jnp.where((pieces == 1)[:, None], zs, stage)
        new_j = new_j.at[index].set(j, mode="drop")
        new_s = new_s.at[index].set(s0 + a * (s1 - s0), mode="drop")
        new_ys = new_ys.at[index].set(start, mode="drop")
        new_zs = new_zs.at[index].set(stage, mode="drop")
    return _Mesh(new_j, new_s, total), new_ys, new_zs


def _solve_collocation(problem, method, guess_fn):
    """Newton (with mesh refinement when `method.tol` is set) on the collocation equations.

    **Returns:** `(ts, (xs, ps), residual, result, n_newton, n_nodes)` for the solution.
    """
    nodes = problem.node_times()
    n_problem = nodes.shape[0]
    initial, maximal = method.mesh_size(n_problem)
    dtype = nodes.dtype
    d = problem.dim
    mesh = _initial_mesh(n_problem, method.n_nodes - 1, maximal, dtype)
    has_jumps = n_problem > 2
    newton_tol = method.newton_tol
    if newton_tol is None:
        newton_tol = 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5

    t = mesh.times(nodes)
    starts = jax.vmap(guess_fn)(t)
    mids = jax.vmap(guess_fn)((t[:-1] + t[1:]) / 2)
    starts, mids = _check_guess(problem, (starts, mids))
    ys = _flat(starts)
    (x0, p0), (xm, pm) = starts, mids
    zs = jnp.concatenate([xm, x0[1:], p0[:-1], pm, p0[1:]], axis=1)

    # Newton and the mesh refinement run on the problem with its gradients stopped; the
    # derivatives come from the implicit function theorem at the root (`_at_root`).
    dynamic, static = eqx.partition(problem, eqx.is_inexact_array)
    frozen = eqx.combine(jax.lax.stop_gradient(dynamic), static)
    frozen_nodes = jax.lax.stop_gradient(nodes)
    factors = jax.eval_shape(
        lambda: _factorise(
            _collocation_jacobian(frozen, mesh, frozen_nodes, has_jumps, ys, zs)[1], d
        )
    )
    factors = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), factors)

    def newton(mesh, ys, zs, factors):
        return _newton(
            frozen,
            mesh,
            frozen_nodes,
            has_jumps,
            ys,
            zs,
            factors,
            newton_tol,
            method.max_newton_steps,
        )

    if method.tol is None:
        ys, zs, _, result, n_newton = newton(mesh, ys, zs, factors)
    else:

        def cond(carry):
            return ~carry[-1]

        def body(carry):
            mesh, ys, zs, factors, _, n_newton, _ = carry
            ys, zs, factors, result, steps = newton(mesh, ys, zs, factors)
            intervals = _interval_ends(frozen, mesh, frozen_nodes, ys, zs)
            rms = _rms_residuals(frozen, *intervals)
            active = jnp.arange(rms.shape[0]) < mesh.n_active
            bad = active & (rms > method.tol)
            pieces = jnp.where(bad, jnp.where(rms < 100 * method.tol, 2, 3), 1)
            # Insert in order along the mesh while there is room.
            pieces = jnp.where(jnp.cumsum(pieces - 1) <= maximal - mesh.n_active, pieces, 1)
            solved = result == TPBVPResults.successful
            passed = ~jnp.any(bad)
            stuck = jnp.all(pieces == 1)
            result = TPBVPResults.where(solved & ~passed, TPBVPResults.max_nodes_reached, result)
            done = ~solved | passed | stuck
            refined = _refine(mesh, intervals, ys, zs, pieces, d)
            mesh, ys, zs = _tree_where(done, (mesh, ys, zs), refined)
            return mesh, ys, zs, factors, result, n_newton + steps, done

        init = (mesh, ys, zs, factors, TPBVPResults.successful, jnp.array(0), jnp.array(False))
        mesh, ys, zs, _, result, n_newton, _ = jax.lax.while_loop(cond, body, init)

    mesh = jax.lax.stop_gradient(mesh)
    ys, zs = _at_root(dynamic, static, mesh, has_jumps, *jax.lax.stop_gradient((ys, zs)))
    # One pass gives the final residual (reported, not differentiated) and the interval
    # ends (differentiable in the problem, for the output).
    residual, ends = _residual_and_ends(problem, mesh, nodes, has_jumps, ys, zs)
    t = mesh.times(nodes)
    ts = jnp.stack([t[:-1], t[1:]], axis=1).reshape(-1)
    out = jnp.stack([ys[:-1], ends], axis=1).reshape(-1, 2 * d)
    return ts, _pair(out, d), jax.lax.stop_gradient(residual), result, n_newton, mesh.n_active + 1


# -------------------------------------------------------------------------------------------
# The solve
# -------------------------------------------------------------------------------------------


def _residual(problem, method, unknowns, nodes):
    ta, tb = _segment_times(nodes, method.pieces)
    if isinstance(method, Shooting):
        ta, tb = nodes[:-1], nodes[1:]
    starts = unknowns
    ends, extra = method.segment_ends(problem, ta, tb, unknowns)
    first = starts if isinstance(method, Shooting) else jtu.tree_map(lambda a: a[0], starts)
    last = jtu.tree_map(lambda a: a[-1], ends)
    boundary = problem.boundary_residual(first, last)
    if isinstance(method, Shooting):
        return boundary, extra
    n_nodes = nodes.shape[0]
    m = method.pieces
    if n_nodes > 2:
        idx = np.arange(1, n_nodes - 1) * m - 1
        jumped = jax.vmap(problem.jump)(
            jnp.arange(1, n_nodes - 1), jtu.tree_map(lambda a: a[idx], ends)
        )
        ends = jtu.tree_map(lambda a, j: a.at[idx].set(j), ends, jumped)
    continuity = jtu.tree_map(lambda e, s: e[:-1] - s[1:], ends, starts)
    return continuity, boundary, extra


def _check_problem(problem):
    if not isinstance(problem, AbstractBoundaryValueProblem):
        raise TypeError(
            f"`problem` must be a deepest boundary-value problem (e.g. "
            f"deepest.ContinuousAssimilation or deepest.BoundaryValueProblem); got "
            f"{type(problem).__name__}."
        )
    nodes = problem.node_times()
    if _is_concrete(nodes):
        nodes_np = np.asarray(nodes)
        if not np.all(np.isfinite(nodes_np)) or np.any(np.diff(nodes_np) <= 0):
            raise ValueError(
                f"The problem's node times must be finite and strictly increasing (T > 0); "
                f"got {nodes_np}."
            )
    return nodes


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


def _check_guess(problem, unknowns):
    leaves = jtu.tree_leaves(unknowns)
    starts = jtu.tree_leaves(unknowns)[:2]
    for leaf in starts:
        if leaf.shape[-1:] != (problem.dim,):
            raise ValueError(
                f"The initial guess must give x and p of shape ({problem.dim},); got "
                f"{leaf.shape[-1:]}."
            )
    message = "The initial guess contains NaN or inf; pass a finite guess."
    if _is_concrete(leaves):
        if not all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves):
            raise ValueError(message)
        return unknowns
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
    return eqx.error_if(unknowns, ~finite, message)


_NOT_CONVERGED = (
    "solve_tpbvp: Newton's method did not converge to a finite root of the boundary-value "
    "problem. Try a better `guess`, more segments or nodes, continuation in R_f "
    "(deepest.anneal_tpbvp), or pass throw=False to inspect the result code."
)
_MAX_NODES = (
    "solve_tpbvp: the collocation mesh reached `max_nodes` before every interval's residual "
    "fell below `tol`. Raise `max_nodes`, loosen `tol`, or pass throw=False to use the "
    "solution on the full mesh (flagged TPBVPResults.max_nodes_reached)."
)


def solve_tpbvp(
    problem: AbstractBoundaryValueProblem,
    method: AbstractTPBVPMethod | None = None,
    guess: Callable | TPBVPSolution | None = None,
    *,
    throw: bool = True,
) -> TPBVPSolution:
    """Solve a two-point boundary value problem for the pair (x, p).

    The method turns the problem into a square system R(u) = 0 (see
    [`deepest.MultipleShooting`][], [`deepest.Shooting`][], [`deepest.Collocation`][]), solved
    by Newton's method: `optimistix.root_find` (lineax LU by default) for the shooting
    methods, a structured factorisation for collocation (which may also refine its mesh).
    Gradients with respect to the problem's arrays (model weights, data, R_m, R_f) come from
    the implicit function theorem, not from unrolling Newton. Runs under `jit` and `vmap`
    (over problems or guesses).

    **Arguments:**

    - `problem`: a [`deepest.ContinuousAssimilation`][] or [`deepest.BoundaryValueProblem`][].
    - `method`: the discretisation (default `MultipleShooting()`).
    - `guess`: `None` (the problem's default guess), a callable `t -> (x, p)`, or a previous
      [`deepest.TPBVPSolution`][] (continuation).
    - `throw`: raise if Newton does not converge or a refining collocation mesh fills up
      (default); with `False` the failure is reported in `solution.result` (check
      `solution.converged`).

    **Returns:** a [`deepest.TPBVPSolution`][].

    **Example:**

        problem = deepest.ContinuousAssimilation(model, data, rm=100.0, rf=10.0)
        sol = deepest.solve_tpbvp(problem, deepest.MultipleShooting(8))
        x_mid, p_mid = sol.evaluate(0.5)
    """
    if method is None:
        method = MultipleShooting()
    if not isinstance(method, AbstractTPBVPMethod):
        raise TypeError(f"`method` must be a deepest TPBVP method; got {type(method).__name__}.")
    _check_problem(problem)
    guess_fn = _guess_function(problem, guess)
    if isinstance(method, Collocation):
        ts, (xs, ps), residual, result, n_newton, n_nodes = _solve_collocation(
            problem, method, guess_fn
        )
    else:
        ts, (xs, ps), residual, result, n_newton, n_nodes = _solve_shooting(
            problem, method, guess_fn
        )
    norm = jnp.max(jnp.stack([jnp.max(jnp.abs(r)) for r in jtu.tree_leaves(residual)]))
    dxs, dps = jax.vmap(lambda t, x, p: problem.vector_field(t, (x, p), None))(ts, xs, ps)
    finite = jnp.isfinite(norm) & jnp.all(jnp.isfinite(xs)) & jnp.all(jnp.isfinite(ps))
    result = TPBVPResults.where(finite, result, TPBVPResults.nonfinite)
    if throw:
        newton_failed = (result != TPBVPResults.successful) & (
            result != TPBVPResults.max_nodes_reached
        )
        xs = eqx.error_if(xs, newton_failed, _NOT_CONVERGED)
        xs = eqx.error_if(xs, result == TPBVPResults.max_nodes_reached, _MAX_NODES)
    return TPBVPSolution(
        ts=ts,
        xs=xs,
        ps=ps,
        dxs=dxs,
        dps=dps,
        residual_norm=norm,
        result=result,
        n_newton=n_newton,
        n_nodes=jnp.asarray(n_nodes),
    )


def _solve_shooting(problem, method, guess_fn):
    nodes = problem.node_times()
    ta, tb = _segment_times(nodes, method.pieces)
    if isinstance(method, Shooting):
        ta, tb = nodes[:-1], nodes[1:]
    unknowns0 = _check_guess(problem, method.unknowns_from(guess_fn, ta, tb))
    root_finder = method.root_finder or _default_root_finder(nodes.dtype)

    def fn(unknowns, prob, m):
        return _residual(prob, m, unknowns, prob.node_times())

    dynamic, static = eqx.partition(problem, eqx.is_inexact_array)
    # Newton iterates with forward-mode-only flows (fast); derivatives with respect to the
    # problem then come from one implicit-function-theorem step at the root,
    # u = u* − J⁻¹ R(u*, θ) with J frozen: its value is u* (R(u*) ≈ 0) and its derivative
    # is exactly −J⁻¹ ∂R/∂θ.
    fast = dataclasses.replace(method, forward_only=True)
    frozen = jax.lax.stop_gradient(dynamic)
    solution = optx.root_find(
        lambda u, d: fn(u, eqx.combine(d, static), fast),
        root_finder,
        unknowns0,
        frozen,
        max_steps=method.max_newton_steps,
        throw=False,
    )
    root = jax.lax.stop_gradient(solution.value)
    flat_root, unravel = jax.flatten_util.ravel_pytree(root)

    def flat_residual(v, prob, m):
        return jax.flatten_util.ravel_pytree(fn(unravel(v), prob, m))[0]

    jac = jax.jacfwd(flat_residual)(flat_root, eqx.combine(frozen, static), fast)
    residual = flat_residual(flat_root, problem, method)
    correction = lx.linear_solve(lx.MatrixLinearOperator(jac), residual, lx.LU(), throw=False).value
    unknowns = unravel(flat_root - correction)
    ts, ys = method.dense(problem, ta, tb, unknowns)
    result = TPBVPResults.promote(solution.result)
    return (
        ts,
        ys,
        jax.lax.stop_gradient(residual),
        result,
        solution.stats["num_steps"],
        ta.shape[0] + 1,
    )


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

    - `problem`: a problem with an `rf` field (e.g. [`deepest.ContinuousAssimilation`][]).
    - `rfs`: the R_f values, typically geometric, `rf0 * alpha ** jnp.arange(n_beta)`.
    - `method`, `guess`, `throw`: as [`deepest.solve_tpbvp`][]; `throw` applies to each
      solve.

    **Returns:** the [`deepest.TPBVPSolution`][]s stacked along a leading axis of size n_rf.

    **Example:**

        sols = deepest.anneal_tpbvp(problem, 1e-2 * 2.0 ** jnp.arange(20))
        best = jax.tree.map(lambda a: a[-1], sols)
    """
    if not hasattr(problem, "rf"):
        raise TypeError(f"{type(problem).__name__} has no `rf` field to anneal.")
    if _is_concrete(rfs) and not np.all(np.asarray(rfs) > 0):
        raise ValueError("Every R_f in `rfs` must be positive.")
    rfs = jnp.asarray(rfs, jnp.result_type(problem.rf))
    if rfs.ndim != 1 or rfs.shape[0] < 1:
        raise ValueError(f"`rfs` must be a non-empty 1-D array; got shape {rfs.shape}.")

    def at(rf):
        return eqx.tree_at(lambda p: p.rf, problem, jnp.broadcast_to(rf, jnp.shape(problem.rf)))

    method = MultipleShooting() if method is None else method
    if isinstance(guess, TPBVPSolution):
        start = guess
    else:
        # The first guess as a solution-shaped carry (its values at the output times of the
        # method's mesh), so that every R_f runs the same compiled solve inside the scan.
        guess_fn = _guess_function(problem, guess)
        nodes = _check_problem(problem)
        ts = _output_times(method, nodes)
        xs, ps = jax.vmap(guess_fn)(ts)
        zero = jnp.zeros((), xs.dtype)
        start = TPBVPSolution(
            ts,
            xs,
            ps,
            jnp.zeros_like(xs),
            jnp.zeros_like(ps),
            zero,
            TPBVPResults.successful,
            jnp.array(0),
            jnp.array(0),
        )

    def body(previous, rf):
        sol = solve_tpbvp(at(rf), method, previous, throw=throw)
        return sol, sol

    _, sols = jax.lax.scan(body, start, rfs)
    return sols


def _output_times(method, nodes):
    """The output times of a solve with `method` on the problem's nodes (initial mesh)."""
    if isinstance(method, Collocation):
        _, maximal = method.mesh_size(nodes.shape[0])
        mesh = _initial_mesh(nodes.shape[0], method.n_nodes - 1, maximal, nodes.dtype)
        t = mesh.times(nodes)
        return jnp.stack([t[:-1], t[1:]], axis=1).reshape(-1)
    if isinstance(method, Shooting):
        ta, tb = nodes[:-1], nodes[1:]
    else:
        ta, tb = _segment_times(nodes, method.pieces)
    frac = jnp.linspace(0, 1, method.steps + 1, dtype=ta.dtype)
    return (ta[:, None] + (tb - ta)[:, None] * frac).reshape(-1)
