"""The collocation mesh on a fixed maximal size, and its residual-controlled refinement."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..._solution import hermite
from ._lobatto import flat, lobatto_interval, unflat

# The interior points of 5-point Lobatto quadrature on [0, 1] and their weights (the end
# points carry no residual): scipy's `solve_bvp` estimates the rms residual with them.
_RMS_POINTS = np.array([0.5 - 0.5 * np.sqrt(3 / 7), 0.5, 0.5 + 0.5 * np.sqrt(3 / 7)])
_RMS_WEIGHTS = np.array([49 / 90, 32 / 45, 49 / 90])


class CollocationMesh(eqx.Module):
    """A mesh on the problem's node intervals: node i at t = τ_{j_i} + s_i (τ_{j_i+1} − τ_{j_i}).

    Storing (j, s) rather than t keeps the times differentiable in the problem's node times.
    The node at an interior τ_j is (j, 0); inactive nodes are (K − 2, 1) = t_1, where their
    zero-length intervals reduce to identities, so the shapes stay fixed while the number
    of active nodes `n_active + 1` changes.
    """

    interval: Int[Array, " n"]
    fraction: Float[Array, " n"]
    n_active: Int[Array, ""]

    def times(self, nodes: Float[Array, " n_nodes"]) -> Float[Array, " n"]:
        """The mesh's times on the problem's node times."""
        return nodes[self.interval] + self.fraction * (
            nodes[self.interval + 1] - nodes[self.interval]
        )

    def jump_index(self) -> Int[Array, " n-1"]:
        """k_n ≥ 1 where interval n ends at interior problem node τ_k (then p jumps), else 0."""
        j, s = self.interval[1:], self.fraction[1:]
        return jnp.where((s == 0) & (j >= 1), j, 0)


def initial_mesh(n_problem_nodes: int, pieces: int, n_intervals: int, dtype) -> CollocationMesh:
    """`pieces` equal intervals between consecutive problem nodes, padded to `n_intervals`."""
    k = n_problem_nodes - 1
    active = k * pieces
    interval = np.full(n_intervals + 1, k - 1)
    fraction = np.ones(n_intervals + 1)
    interval[:active] = np.repeat(np.arange(k), pieces)
    fraction[:active] = np.tile(np.arange(pieces) / pieces, k)
    return CollocationMesh(jnp.asarray(interval), jnp.asarray(fraction, dtype), jnp.asarray(active))


def _interval_ends(problem, mesh, nodes, ys, zs):
    """Per interval: start time, length, start state, end state before any jump, and ẏ there."""
    t = mesh.times(nodes)
    ta, h = t[:-1], t[1:] - t[:-1]
    _, ends = jax.vmap(lambda a, b, y, z: lobatto_interval(problem, a, b, y, z))(ta, h, ys[:-1], zs)
    d = problem.dim

    def field(t, y):
        return flat(problem.vector_field(t, unflat(y, d), None))

    return ta, h, ys[:-1], ends, jax.vmap(field)(ta, ys[:-1]), jax.vmap(field)(ta + h, ends)


def _rms_residuals(problem, ta, h, y0, y1, f0, f1):
    """scipy's estimate: rms over each interval of (S' − f(S))/(1 + |f(S)|), S the cubic
    Hermite interpolant, by 5-point Lobatto quadrature (zero at the ends)."""
    d = problem.dim
    dtype = y0.dtype

    def one(ta, h, y0, y1, f0, f1):
        def at(s):
            value, slope = hermite(s, h, y0, y1, f0, f1)
            f = flat(problem.vector_field(ta + s * h, unflat(value, d), None))
            return jnp.sum(((slope - f) / (1 + jnp.abs(f))) ** 2)

        squares = jax.vmap(at)(jnp.asarray(_RMS_POINTS, dtype))
        rms = jnp.sqrt(0.5 * jnp.sum(jnp.asarray(_RMS_WEIGHTS, dtype) * squares))
        return jnp.where(h > 0, rms, 0)

    return jax.vmap(one)(ta, h, y0, y1, f0, f1)


def refine(problem, mesh, nodes, ys, zs, tol: float, n_intervals: int):
    """One refinement of a solved mesh, as scipy's `solve_bvp` (Kierzenka & Shampine 2001).

    Each active interval whose rms relative residual exceeds `tol` is split in two (in three
    above 100·tol), in order along the mesh while the `n_intervals` of the maximal mesh
    have room; the solution is carried over by its cubic Hermite interpolant (unsplit
    intervals keep their stages).

    **Returns:** `(passed, stuck, (mesh, ys, zs))`: whether every interval met `tol`,
    whether no interval could be split, and the refined mesh with its starting solution.
    """
    intervals = _interval_ends(problem, mesh, nodes, ys, zs)
    rms = _rms_residuals(problem, *intervals)
    active = jnp.arange(rms.shape[0]) < mesh.n_active
    bad = active & (rms > tol)
    pieces = jnp.where(bad, jnp.where(rms < 100 * tol, 2, 3), 1)
    pieces = jnp.where(jnp.cumsum(pieces - 1) <= n_intervals - mesh.n_active, pieces, 1)
    refined = _split(mesh, intervals, ys, zs, pieces, problem.dim)
    return ~jnp.any(bad), jnp.all(pieces == 1), refined


def _split(mesh, intervals, ys, zs, pieces, d):
    """Split each interval into `pieces` (1: keep, 2: halve, 3: thirds)."""
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
        return hermite(frac[:, None], h[:, None], y0, y1, f0, f1)[0]

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
    return CollocationMesh(new_j, new_s, total), new_ys, new_zs
