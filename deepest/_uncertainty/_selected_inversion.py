"""Selected inversion of a symmetric bordered block-tridiagonal matrix: the diagonal blocks
of its inverse, and its log-determinant, in O(N·d³) without forming the inverse."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Bool, Float, Scalar


class SelectedInverse(eqx.Module):
    """The blocks of H⁻¹ that marginal statistics need, for one H.

    - `diagonal`: (N, d, d) the diagonal blocks (H⁻¹)_nn: each time's marginal covariance.
    - `border`: (N, d, p) the blocks (H⁻¹)_nθ.
    - `corner`: (p, p) the block (H⁻¹)_θθ: the parameters' marginal covariance.
    - `log_det`: log det H.
    - `positive_definite`: every pivot block was positive definite (H is, by Sylvester's
      criterion); where False the other fields are not finite.
    """

    diagonal: Float[Array, "n d d"]
    border: Float[Array, "n d p"]
    corner: Float[Array, "p p"]
    log_det: Scalar
    positive_definite: Bool[Array, ""]


class BlockFactor(eqx.Module):
    """H = L̃·D·L̃ᵀ for a bordered block-tridiagonal H: unit block-lower L̃ with
    L̃_{n+1,n} = W_nᵀ and L̃_{θ,n} = V_nᵀ, D = diag(S_0, …, S_{N−1}, S_θ) kept as the
    Cholesky factors of its blocks."""

    chol: Float[Array, "n d d"]
    w: Float[Array, "n d d"]
    v: Float[Array, "n d p"]
    chol_theta: Float[Array, "p p"]

    def whiten(self, states: Float[Array, "n d"], params: Float[Array, " p"]):
        """z = D^{1/2}·L̃ᵀ·x: N(0, H⁻¹) in x is N(0, I) in z."""
        y = states + jnp.einsum("nij,nj->ni", self.w, jnp.roll(states, -1, axis=0))
        y = y + self.v @ params  # the last W is zero, so the rolled-in row drops out
        z = jnp.einsum("nji,nj->ni", self.chol, y)
        return z, self.chol_theta.T @ params

    def colour(self, z_states: Float[Array, "n d"], z_params: Float[Array, " p"]):
        """x = L̃⁻ᵀ·D^{−1/2}·z, the inverse of `whiten`, by one backward sweep."""
        tri = jax.vmap(lambda c, b: jsl.solve_triangular(c, b, lower=True, trans="T"))
        w_states = tri(self.chol, z_states)
        theta = jsl.solve_triangular(self.chol_theta, z_params, lower=True, trans="T")

        def backward(x_next, block):
            w_n, v_n, rhs = block
            x = rhs - w_n @ x_next - v_n @ theta
            return x, x

        zero = jnp.zeros_like(z_states[0])
        _, states = jax.lax.scan(backward, zero, (self.w, self.v, w_states), reverse=True)
        return states, theta


def _cholesky(a):
    """The inverse of a symmetric positive definite block, its Cholesky factor, and its
    log-determinant."""
    c = jnp.linalg.cholesky(a)
    inverse = jsl.cho_solve((c, True), jnp.eye(a.shape[0], dtype=a.dtype))
    return (inverse + inverse.T) / 2, c, 2 * jnp.sum(jnp.log(jnp.diagonal(c)))


def _forward(diagonal, off, border):
    """Block elimination forward in time: S_n⁻¹, W_n = S_n⁻¹O_n, V_n = S_n⁻¹B̃_n, B̃_n,
    log det S_n and the Cholesky factor of S_n."""
    d, p = diagonal.shape[1], border.shape[2]
    dtype = diagonal.dtype
    off_prev = jnp.concatenate([jnp.zeros((1, d, d), dtype), off])
    off_next = jnp.concatenate([off, jnp.zeros((1, d, d), dtype)])

    def forward(carry, block):
        w_prev, v_prev = carry  # S⁻¹O and S⁻¹B̃ of the previous time
        diag, b, o_prev, o_next = block
        s = diag - o_prev.T @ w_prev
        b_tilde = b - o_prev.T @ v_prev
        s_inv, chol, log_det = _cholesky(s)
        w, v = s_inv @ o_next, s_inv @ b_tilde
        return (w, v), (s_inv, w, v, b_tilde, log_det, chol)

    start = (jnp.zeros((d, d), dtype), jnp.zeros((d, p), dtype))
    return jax.lax.scan(forward, start, (diagonal, border, off_prev, off_next))[1]


def factor(
    diagonal: Float[Array, "n d d"],
    off: Float[Array, "n-1 d d"],
    border: Float[Array, "n d p"],
    corner: Float[Array, "p p"],
) -> BlockFactor:
    """The block LDLᵀ factor of the bordered block-tridiagonal H of
    [`deepest.selected_inversion`][], for whitening: O(N·d³)."""
    _, w, v, b_tilde, _, chol = _forward(diagonal, off, border)
    schur = corner - jnp.einsum("nip,niq->pq", b_tilde, v)
    return BlockFactor(chol, w, v, jnp.linalg.cholesky(schur))


def selected_inversion(
    diagonal: Float[Array, "n d d"],
    off: Float[Array, "n-1 d d"],
    border: Float[Array, "n d p"],
    corner: Float[Array, "p p"],
) -> SelectedInverse:
    """The diagonal blocks of H⁻¹ and log det H for the symmetric positive definite

        H = [[T, B], [Bᵀ, C]],   T = tridiag(offᵀ, diagonal, off)   (N blocks of d × d),

    as in the Hessian of a data-assimilation action (states local in time, bordered by
    the parameters θ).

    Block LDLᵀ forward in time: S_0 = D_0, S_n = D_n − O_{n−1}ᵀ S_{n−1}⁻¹ O_{n−1}, the
    border eliminated alongside (B̃_n = B_n − O_{n−1}ᵀ S_{n−1}⁻¹ B̃_{n−1}), then
    S_θ = C − Σ_n B̃_nᵀ S_n⁻¹ B̃_n; log det H = Σ_n log det S_n + log det S_θ. Then
    Takahashi's recurrence backward (Takahashi, Fagan & Chin 1973; for a chain it is the
    Rauch–Tung–Striebel smoother), with W_n = S_n⁻¹ O_n and V_n = S_n⁻¹ B̃_n:

        G_θθ = S_θ⁻¹,   G_nθ = −W_n G_{n+1,θ} − V_n G_θθ,
        G_{n,n+1} = −W_n G_{n+1,n+1} − V_n G_{n+1,θ}ᵀ,
        G_nn = S_n⁻¹ − W_n G_{n,n+1}ᵀ − V_n G_nθᵀ.

    Each step costs O(d³ + d²p + dp²): the whole is linear in N. Batch it with `jax.vmap`.

    **Returns:** a [`deepest.SelectedInverse`][].
    """
    return _select(diagonal, off, border, corner)[0]


def _select(diagonal, off, border, corner):
    """`selected_inversion`, and the forward elimination's S_n⁻¹, W_n, V_n, B̃_n for
    `selected_inversion_and_solve`."""
    s_inv, w, v, b_tilde, log_dets, _ = _forward(diagonal, off, border)
    schur = corner - jnp.einsum("nip,niq->pq", b_tilde, v)
    p = corner.shape[0]
    if p:
        g_theta, log_det_theta = _cholesky(schur)[::2]
    else:
        g_theta, log_det_theta = schur, jnp.zeros((), diagonal.dtype)
    d = diagonal.shape[1]
    dtype = diagonal.dtype

    def backward(carry, block):
        g_next, g_next_theta = carry  # G_{n+1,n+1}, G_{n+1,θ}
        s_inv_n, w_n, v_n = block
        g_theta_n = -w_n @ g_next_theta - v_n @ g_theta
        g_off = -w_n @ g_next - v_n @ g_next_theta.T
        g = s_inv_n - w_n @ g_off.T - v_n @ g_theta_n.T
        g = (g + g.T) / 2
        return (g, g_theta_n), (g, g_theta_n)

    # The last time has no successor: its W is zero, so the zero carry drops out.
    zero = (jnp.zeros((d, d), dtype), jnp.zeros((d, p), dtype))
    _, (g_diag, g_border) = jax.lax.scan(backward, zero, (s_inv, w, v), reverse=True)
    log_det = jnp.sum(log_dets) + log_det_theta
    finite = jnp.isfinite(log_det) & jnp.all(jnp.isfinite(g_diag))
    inverse = SelectedInverse(g_diag, g_border, g_theta, log_det, finite)
    return inverse, (s_inv, w, v, b_tilde)


def selected_inversion_and_solve(
    diagonal: Float[Array, "n d d"],
    off: Float[Array, "n-1 d d"],
    border: Float[Array, "n d p"],
    corner: Float[Array, "p p"],
    rhs_states: Float[Array, "n d"],
    rhs_params: Float[Array, " p"],
) -> tuple[SelectedInverse, tuple[Float[Array, "n d"], Float[Array, " p"]]]:
    """[`deepest.selected_inversion`][] of H and the solution (x, θ) of H·(x, θ) =
    (rhs_states, rhs_params) from the same elimination (as `solve_block_tridiagonal`
    solves it): u_n = S_n⁻¹(a_n − O_{n−1}ᵀ u_{n−1}) forward, θ = S_θ⁻¹(b − Σ B̃_nᵀ u_n),
    then x_n = u_n − W_n x_{n+1} − V_n θ backward."""
    inverse, eliminated = _select(diagonal, off, border, corner)
    return inverse, _substitute(off, eliminated, inverse.corner, rhs_states, rhs_params)


def solve_eliminated(
    diagonal: Float[Array, "n d d"],
    off: Float[Array, "n-1 d d"],
    border: Float[Array, "n d p"],
    corner: Float[Array, "p p"],
    rhs_states: Float[Array, "n d"],
    rhs_params: Float[Array, " p"],
) -> tuple[Float[Array, "n d"], Float[Array, " p"]]:
    """The solution of `selected_inversion_and_solve` alone (no selected inverse)."""
    s_inv, w, v, b_tilde, _, _ = _forward(diagonal, off, border)
    schur = corner - jnp.einsum("nip,niq->pq", b_tilde, v)
    g_theta = _cholesky(schur)[0] if corner.shape[0] else schur
    return _substitute(off, (s_inv, w, v, b_tilde), g_theta, rhs_states, rhs_params)


def _substitute(off, eliminated, g_theta, rhs_states, rhs_params):
    """Forward and back substitution through the block elimination (see
    `selected_inversion_and_solve`), S_θ⁻¹ = `g_theta`."""
    s_inv, w, v, b_tilde = eliminated
    off_prev = jnp.concatenate([jnp.zeros_like(s_inv[:1]), off])

    def forward(u_prev, block):
        s_inv_n, o_prev, a_n = block
        u = s_inv_n @ (a_n - o_prev.T @ u_prev)
        return u, u

    _, u = jax.lax.scan(forward, jnp.zeros_like(rhs_states[0]), (s_inv, off_prev, rhs_states))
    theta = g_theta @ (rhs_params - jnp.einsum("nip,ni->p", b_tilde, u))

    def backward(x_next, block):
        u_n, w_n, v_n = block
        x = u_n - w_n @ x_next - v_n @ theta
        return x, x

    _, x = jax.lax.scan(backward, jnp.zeros_like(u[0]), (u, w, v), reverse=True)
    return x, theta
