"""Collocation with the Lobatto IIIA–IIIB pair and residual-controlled mesh refinement."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float

from ...._misc import positive_int, tree_where
from ...._results import RESULTS
from ..._solution import build_solution
from .._base import AbstractTPBVPMethod, check_guess, default_tol
from ._lobatto import collocation_jacobian, collocation_residual, flat, residual_and_ends, unflat
from ._mesh import CollocationMesh, initial_mesh, refine
from ._newton import at_root, factorise, newton


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
    passes or the mesh is full (then the result is `RESULTS.max_nodes_reached`).
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
    - `max_newton_steps`: Newton iterations per mesh before giving up.

    Derivatives with respect to the problem's arrays come from the implicit function
    theorem at the root (the Jacobian is factorised there only when differentiating). The
    refined mesh is held fixed in relative position (its nodes follow the problem's node
    times): the choice of mesh is piecewise constant in the problem.

    The collocation equations themselves are public, for checks and for other solvers:
    [`deepest.Collocation.initial_mesh`][], [`deepest.Collocation.residual`][] and
    [`deepest.Collocation.jacobian`][].

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
        positive_int(self.max_newton_steps, "max_newton_steps")

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

    def initial_mesh(self, nodes: Float[Array, " n_nodes"]) -> CollocationMesh:
        """The uniform initial mesh on a problem's node times: `n_nodes − 1` equal intervals
        between consecutive node times, padded with inactive nodes at t_1 to the maximal
        size (`mesh_size`). Its `times(nodes)` are the mesh times."""
        _, maximal = self.mesh_size(nodes.shape[0])
        return initial_mesh(nodes.shape[0], self.n_nodes - 1, maximal, nodes.dtype)

    def residual(
        self,
        problem,
        mesh: CollocationMesh,
        ys: Float[Array, "n+1 2*dim"],
        zs: Float[Array, "n 5*dim"],
    ) -> tuple[Array, Array, Array]:
        """The collocation equations R(y, Z) on a mesh, zero at a solution.

        **Arguments:**

        - `problem`: the boundary-value problem.
        - `mesh`: a mesh of n intervals, e.g. `initial_mesh(problem.node_times())`.
        - `ys`: the node states y_n = [x_n, p_n], (n + 1, 2·dim).
        - `zs`: each interval's stages Z_n = [X_2, X_3, P_1, P_2, P_3], (n, 5·dim).

        **Returns:** `(stage, continuity, boundary)`: the stage residuals (n, 5·dim), the
        continuity residuals y(end of interval n) → jump → − y_{n+1} (n, 2·dim), and the
        boundary conditions (2·dim,).
        """
        nodes = problem.node_times()
        return collocation_residual(problem, mesh, nodes, nodes.shape[0] > 2, ys, zs)

    def jacobian(
        self,
        problem,
        mesh: CollocationMesh,
        ys: Float[Array, "n+1 2*dim"],
        zs: Float[Array, "n 5*dim"],
    ) -> tuple[tuple[Array, Array, Array], tuple[Array, Array]]:
        """The collocation equations and the blocks of their Jacobian, per interval.

        Assembled from the vector field's Jacobian at the stages and the Lobatto
        coefficients (not by differentiating the whole residual); Newton's method
        factorises these blocks.

        **Arguments:** as [`deepest.Collocation.residual`][].

        **Returns:** `(residual, (jac, bjac))`: the residual as `residual` returns it;
        `jac` (n, 7·dim, 7·dim), interval n's rows (its stage residuals, then its
        continuity residual) against its columns (y_n, then Z_n); `bjac` (2·dim, 4·dim),
        the boundary conditions against (y_0, y_n).
        """
        nodes = problem.node_times()
        return collocation_jacobian(problem, mesh, nodes, nodes.shape[0] > 2, ys, zs)

    def output_times(self, nodes):
        t = self.initial_mesh(nodes).times(nodes)
        return jnp.stack([t[:-1], t[1:]], axis=1).reshape(-1)

    def solve(self, problem, guess):
        """Newton (with mesh refinement when `tol` is set) on the collocation equations."""
        nodes = problem.node_times()
        n_problem = nodes.shape[0]
        _, maximal = self.mesh_size(n_problem)
        d = problem.dim
        mesh = self.initial_mesh(nodes)
        has_jumps = n_problem > 2
        newton_tol = default_tol(nodes.dtype) if self.newton_tol is None else self.newton_tol

        t = mesh.times(nodes)
        starts = jax.vmap(guess)(t)
        mids = jax.vmap(guess)((t[:-1] + t[1:]) / 2)
        starts, mids = check_guess(problem, (starts, mids))
        ys = flat(starts)
        (x0, p0), (xm, pm) = starts, mids
        zs = jnp.concatenate([xm, x0[1:], p0[:-1], pm, p0[1:]], axis=1)

        # Newton and the mesh refinement run on the problem with its gradients stopped; the
        # derivatives come from the implicit function theorem at the root (`at_root`).
        dynamic, static = eqx.partition(problem, eqx.is_inexact_array)
        frozen = eqx.combine(jax.lax.stop_gradient(dynamic), static)
        frozen_nodes = jax.lax.stop_gradient(nodes)
        factors = jax.eval_shape(
            lambda: factorise(
                collocation_jacobian(frozen, mesh, frozen_nodes, has_jumps, ys, zs)[1], d
            )
        )
        factors = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), factors)

        def solve_on(mesh, ys, zs, factors):
            return newton(
                frozen,
                mesh,
                frozen_nodes,
                has_jumps,
                ys,
                zs,
                factors,
                newton_tol,
                self.max_newton_steps,
            )

        if self.tol is None:
            ys, zs, _, result, n_newton = solve_on(mesh, ys, zs, factors)
        else:

            def cond(carry):
                return ~carry[-1]

            def body(carry):
                mesh, ys, zs, factors, _, n_newton, _ = carry
                ys, zs, factors, result, steps = solve_on(mesh, ys, zs, factors)
                passed, stuck, refined = refine(
                    frozen, mesh, frozen_nodes, ys, zs, self.tol, maximal
                )
                solved = result == RESULTS.successful
                result = RESULTS.where(solved & ~passed, RESULTS.max_nodes_reached, result)
                done = ~solved | passed | stuck
                mesh, ys, zs = tree_where(done, (mesh, ys, zs), refined)
                return mesh, ys, zs, factors, result, n_newton + steps, done

            init = (
                mesh,
                ys,
                zs,
                factors,
                RESULTS.successful,
                jnp.array(0),
                jnp.array(False),
            )
            mesh, ys, zs, _, result, n_newton, _ = jax.lax.while_loop(cond, body, init)

        mesh = jax.lax.stop_gradient(mesh)
        ys, zs = at_root(dynamic, static, mesh, has_jumps, *jax.lax.stop_gradient((ys, zs)))
        # One pass gives the final residual (reported, not differentiated) and the interval
        # ends (differentiable in the problem, for the output).
        residual, ends = residual_and_ends(problem, mesh, nodes, has_jumps, ys, zs)
        t = mesh.times(nodes)
        ts = jnp.stack([t[:-1], t[1:]], axis=1).reshape(-1)
        out = jnp.stack([ys[:-1], ends], axis=1).reshape(-1, 2 * d)
        return build_solution(
            problem,
            ts,
            unflat(out, d),
            jax.lax.stop_gradient(residual),
            result,
            n_newton,
            mesh.n_active + 1,
        )
