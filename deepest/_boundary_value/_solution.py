"""The solution of a boundary-value problem: result codes, states, dense output, quadrature."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from .._misc import Pair
from .._results import RESULTS


def hermite(s, h, y0, y1, f0, f1):
    """The cubic Hermite interpolant (order 4) on an interval of length `h` from states
    `y0`, `y1` and slopes `f0`, `f1` at its ends: its value and time derivative at the
    fraction `s` of the interval (safe for h = 0)."""
    h00, h10 = (1 + 2 * s) * (1 - s) ** 2, s * (1 - s) ** 2
    h01, h11 = s**2 * (3 - 2 * s), s**2 * (s - 1)
    value = h00 * y0 + h10 * h * f0 + h01 * y1 + h11 * h * f1
    d00, d10 = 6 * s**2 - 6 * s, 3 * s**2 - 4 * s + 1
    d01, d11 = 6 * s - 6 * s**2, 3 * s**2 - 2 * s
    slope = (d00 * y0 + d01 * y1) / jnp.where(h > 0, h, 1) + d10 * f0 + d11 * f1
    return value, slope


def _hermite_at(t0, t1, y0, y1, f0, f1, t):
    """The cubic Hermite interpolant on [t0, t1] at time `t` (clipped to the interval)."""
    h = t1 - t0
    s = jnp.clip((t - t0) / jnp.where(h > 0, h, 1), 0, 1)
    return hermite(s, h, y0, y1, f0, f1)[0]


class TPBVPSolution(eqx.Module):
    """The solution of [`deepest.solve_tpbvp`][] (stacked along a leading axis: of
    [`deepest.anneal_tpbvp`][]).

    **Fields:**

    - `ts`: the output times (N,). Segment boundaries appear twice: the state just before
      and just after it (they differ across an interior jump).
    - `xs`, `ps`: the states x(t) and momenta p(t) at `ts`, (N, dim) each.
    - `dxs`, `dps`: ẋ and ṗ at `ts` (used for dense output).
    - `residual_norm`: the max-norm of the final Newton residual (continuity, boundary and,
      for collocation, stage equations).
    - `result`: a [`deepest.RESULTS`][] code (optimistix's codes, promoted):
      `successful` when Newton converged to a finite root (and, for a refining
      [`deepest.Collocation`][], every interval met `tol`); `max_nodes_reached` when the
      collocation mesh filled up first (the solution on the full mesh is returned).
    - `n_newton`: the number of Newton iterations taken (over all meshes).
    - `n_nodes`: the mesh nodes used (collocation: the active nodes of the refined mesh;
      shooting: the segment boundaries).

    `sol.evaluate(t)` gives (x(t), p(t)) by cubic Hermite interpolation (right limit at a
    jump time); it works for scalar `t` and, vmapped, for arrays of times.
    `sol.quadrature(g)` integrates g(t, x(t), p(t)) along the solution.
    """

    ts: Float[Array, " n"]
    xs: Float[Array, "n dim"]
    ps: Float[Array, "n dim"]
    dxs: Float[Array, "n dim"]
    dps: Float[Array, "n dim"]
    residual_norm: Float[Array, ""]
    result: RESULTS
    n_newton: Int[Array, ""]
    n_nodes: Int[Array, ""]

    @property
    def converged(self) -> Array:
        """Whether Newton converged (a boolean array)."""
        return self.result == RESULTS.successful

    def evaluate(self, t: Float[ArrayLike, ""]) -> Pair:
        """(x(t), p(t)) by cubic Hermite interpolation between the stored states."""
        t = jnp.asarray(t, self.ts.dtype)
        n = self.ts.shape[0]
        i = jnp.clip(jnp.searchsorted(self.ts, t, side="right") - 1, 0, n - 2)
        args = (self.ts[i], self.ts[i + 1])
        x = _hermite_at(*args, self.xs[i], self.xs[i + 1], self.dxs[i], self.dxs[i + 1], t)
        p = _hermite_at(*args, self.ps[i], self.ps[i + 1], self.dps[i], self.dps[i + 1], t)
        return x, p

    def quadrature(self, integrand: Callable, order: int = 3) -> PyTree[Array]:
        """∫ g(t, x(t), p(t)) dt along the solution.

        Gauss–Legendre quadrature (`order` points) on each output interval of the Hermite
        interpolant (not a time integration of an ODE: that is [`deepest.integrate`][]).

        **Arguments:**

        - `integrand`: `g(t, x, p)`, returning any pytree of arrays.
        - `order`: the Gauss–Legendre points per output interval.

        **Returns:** the integral, a pytree shaped like `g`'s output.

        **Example:**

            model_term = sol.quadrature(lambda t, x, p: jnp.sum(p**2) / (2 * rf))
        """
        nodes, weights = np.polynomial.legendre.leggauss(order)
        dtype = self.ts.dtype
        nodes = jnp.asarray((nodes + 1) / 2, dtype)
        weights = jnp.asarray(weights / 2, dtype)

        def on_interval(i):
            t0, t1 = self.ts[i], self.ts[i + 1]
            h = t1 - t0

            def at(s, w):
                t = t0 + s * h
                x = _hermite_at(t0, t1, self.xs[i], self.xs[i + 1], self.dxs[i], self.dxs[i + 1], t)
                p = _hermite_at(t0, t1, self.ps[i], self.ps[i + 1], self.dps[i], self.dps[i + 1], t)
                return jtu.tree_map(lambda g: (w * h) * g, integrand(t, x, p))

            return jtu.tree_map(lambda g: jnp.sum(g, axis=0), jax.vmap(at)(nodes, weights))

        per_interval = jax.vmap(on_interval)(jnp.arange(self.ts.shape[0] - 1))
        return jtu.tree_map(lambda g: jnp.sum(g, axis=0), per_interval)


def build_solution(
    problem, ts, ys: Pair, residual: PyTree[Array], result, n_newton, n_nodes
) -> TPBVPSolution:
    """The solution Module from a method's output path: the final residual's max-norm, the
    vector field at the output times (for dense output), and `nonfinite` where the path or
    residual is not finite. Failures are flagged, never raised (`solve_tpbvp` raises)."""
    xs, ps = ys
    norm = jnp.max(jnp.stack([jnp.max(jnp.abs(r)) for r in jtu.tree_leaves(residual)]))
    dxs, dps = jax.vmap(lambda t, x, p: problem.vector_field(t, (x, p), None))(ts, xs, ps)
    finite = jnp.isfinite(norm) & jnp.all(jnp.isfinite(xs)) & jnp.all(jnp.isfinite(ps))
    return TPBVPSolution(
        ts=ts,
        xs=xs,
        ps=ps,
        dxs=dxs,
        dps=dps,
        residual_norm=norm,
        result=RESULTS.where(finite, result, RESULTS.nonfinite),
        n_newton=n_newton,
        n_nodes=jnp.asarray(n_nodes),
    )
