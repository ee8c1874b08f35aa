"""The Lobatto IIIA–IIIB collocation equations on a mesh: residuals and Jacobian blocks."""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ...._misc import Pair

# Lobatto IIIA (for x) and IIIB (for p), 3 stages: c = (0, ½, 1), b = (1/6, 2/3, 1/6).
# HLW (Geometric Numerical Integration) II.2.2 and VI.4: the pair satisfies
# b_i â_ij + b_j a_ji = b_i b_j, so it is symplectic for any Hamiltonian, and has order 4.
LOBATTO_C = np.array([0.0, 0.5, 1.0])
LOBATTO_B = np.array([1 / 6, 2 / 3, 1 / 6])
LOBATTO_A = np.array([[0, 0, 0], [5 / 24, 1 / 3, -1 / 24], [1 / 6, 2 / 3, 1 / 6]])
LOBATTO_AHAT = np.array([[1 / 6, -1 / 6, 0], [1 / 6, 1 / 3, 0], [1 / 6, 5 / 6, 0]])


def flat(y: Pair) -> Array:
    """The pair (x, p) as one array [x, p] along the last axis."""
    return jnp.concatenate(y, axis=-1)


def unflat(v: Array, dim: int) -> Pair:
    """The pair (x, p) from [x, p] along the last axis."""
    return v[..., :dim], v[..., dim:]


def _stages(dim: int, y, z):
    """One interval's stage states X_1..3 (X_1 = x_n) and P_1..3, each (3, dim)."""
    x = y[:dim]
    return jnp.stack([x, z[:dim], z[dim : 2 * dim]]), z[2 * dim :].reshape(3, dim)


def _combine(h, y, big_x, big_p, f, g):
    """Stage residuals (5·dim) and the end state before any jump (2·dim) of one interval,
    from its stages and the vector field there (f = ẋ, g = ṗ, each (3, dim))."""
    a, ahat, b = (jnp.asarray(m, y.dtype) for m in (LOBATTO_A, LOBATTO_AHAT, LOBATTO_B))
    x, p = unflat(y, big_x.shape[-1])
    res_x = big_x[1:] - x[None] - h * (a[1:] @ f)
    res_p = big_p - p[None] - h * (ahat @ g)
    end = jnp.concatenate([big_x[2], p + h * (b @ g)])
    return jnp.concatenate([res_x.reshape(-1), res_p.reshape(-1)]), end


def lobatto_interval(problem, ta, h, y, z):
    """Stage residuals (5·dim) and the end state before any jump (2·dim) of one interval."""
    big_x, big_p = _stages(problem.dim, y, z)
    c = jnp.asarray(LOBATTO_C, y.dtype)
    f, g = jax.vmap(lambda t, xi, pi: problem.vector_field(t, (xi, pi), None))(
        ta + h * c, big_x, big_p
    )
    return _combine(h, y, big_x, big_p, f, g)


def _apply_jump(problem, has_jumps, k, end):
    if not has_jumps:
        return end
    jumped = flat(problem.jump(jnp.maximum(k, 1), unflat(end, problem.dim)))
    return jnp.where(k > 0, jumped, end)


def residual_and_ends(problem, mesh, nodes, has_jumps, ys, zs):
    """The residuals (as `collocation_residual`) and each interval's end state before any
    jump (n, 2·dim)."""
    t = mesh.times(nodes)
    stage, ends = jax.vmap(lambda ta, h, y, z: lobatto_interval(problem, ta, h, y, z))(
        t[:-1], t[1:] - t[:-1], ys[:-1], zs
    )
    jumped = jax.vmap(lambda k, e: _apply_jump(problem, has_jumps, k, e))(mesh.jump_index(), ends)
    d = problem.dim
    boundary = problem.boundary_residual(unflat(ys[0], d), unflat(ys[-1], d))
    return (stage, jumped - ys[1:], boundary), ends


def collocation_residual(problem, mesh, nodes, has_jumps, ys, zs):
    """(stage residuals (n, 5·dim), continuity residuals (n, 2·dim), boundary (2·dim))."""
    return residual_and_ends(problem, mesh, nodes, has_jumps, ys, zs)[0]


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


def collocation_jacobian(problem, mesh, nodes, has_jumps, ys, zs):
    """The residuals and the blocks of their Jacobian, per interval.

    Assembled from the vector field's Jacobian at the 3 stages of every interval (one
    vmapped `jacfwd` with 2·dim tangents) and the Lobatto coefficients: the stage residuals
    are linear in the stage fields, so differentiating the whole interval map (7·dim
    tangents through three field evaluations) would repeat that work 3.5 times over.
    """
    d = problem.dim
    dtype = ys.dtype
    a, ahat, b, c = (jnp.asarray(m, dtype) for m in (LOBATTO_A, LOBATTO_AHAT, LOBATTO_B, LOBATTO_C))
    t = mesh.times(nodes)
    ta, h = t[:-1], t[1:] - t[:-1]
    n = h.shape[0]
    big_x, big_p = jax.vmap(lambda y, z: _stages(d, y, z))(ys[:-1], zs)  # (n, 3, dim)

    def field(t, y):
        out = flat(problem.vector_field(t, unflat(y, d), None))
        return out, out

    jac_field, fields = jax.vmap(jax.vmap(jax.jacfwd(field, argnums=1, has_aux=True)))(
        ta[:, None] + h[:, None] * c[None], jnp.concatenate([big_x, big_p], axis=-1)
    )
    stage, ends = jax.vmap(_combine)(h, ys[:-1], big_x, big_p, fields[..., :d], fields[..., d:])

    # Rows of kind x take −h a_ij ∂ẋ_j; rows of kind p take −h â_ij ∂ṗ_j (stages) and
    # h b_j ∂ṗ_j (the end's p); the end's x takes none.
    dx = jnp.einsum("nij,njak->niajk", -h[:, None, None] * a[None, 1:], jac_field[:, :, :d])
    coeff_p = h[:, None, None] * jnp.concatenate([-ahat, b[None]])[None]
    dp = jnp.einsum("nij,njak->niajk", coeff_p, jac_field[:, :, d:])
    none = jnp.zeros((n, 1, d, 3, 2 * d), dtype)
    rows = jnp.concatenate([dx, dp[:, :3], none, dp[:, 3:]], axis=1)
    # Columns (stage j, x or p) → X_1, X_2, X_3, P_1, P_2, P_3, where X_1 is x_n.
    stage_cols = jnp.swapaxes(rows.reshape(n, 7 * d, 3, 2, d), 2, 3).reshape(n, 7 * d, 6 * d)
    zero = jnp.zeros((n, 7 * d, d), dtype)
    jac = jnp.concatenate([stage_cols[..., :d], zero, stage_cols[..., d:]], axis=-1)
    jac = jac + jnp.asarray(_constant_blocks(d), dtype)[None]
    if has_jumps:

        def jump(k, end):
            out = _apply_jump(problem, has_jumps, k, end)
            return out, out

        jac_jump, ends = jax.vmap(jax.jacfwd(jump, argnums=1, has_aux=True))(
            mesh.jump_index(), ends
        )
        jac = jnp.concatenate([jac[:, : 5 * d], jac_jump @ jac[:, 5 * d :]], axis=1)

    def boundary(v):
        out = problem.boundary_residual(unflat(v[: 2 * d], d), unflat(v[2 * d :], d))
        return out, out

    bjac, bres = jax.jacfwd(boundary, has_aux=True)(jnp.concatenate([ys[0], ys[-1]]))
    return (stage, ends - ys[1:], bres), (jac, bjac)
