"""Small dense linear algebra shared by the structured solvers: a Gauss–Jordan sweep over
many small matrices at once, in plain XLA operations.

Why not LAPACK: on CPU, jaxlib runs a batched LAPACK call (`jnp.linalg.cholesky`,
`solve_triangular`, `jnp.linalg.solve`) over its batch in the intra-op thread pool. Inside a
program sharded over several CPU devices those pools are shared, and a large enough batch
deadlocks (seen with two devices and 48 annealing lanes). For blocks of ≲ 40 rows LAPACK's
per-call overhead also dominates, so the vectorised sweep is as fast (measured in
the Levenberg–Marquardt minimiser and the collocation method's Newton solve).
"""

import jax.numpy as jnp
from jaxtyping import Array, Float


def gauss_jordan(a: Float[Array, "batch m w"], m: int) -> Float[Array, "batch m w"]:
    """Gauss–Jordan sweep of the first `m` pivots of many small matrices at once.

    For a = [A | B] with A of size m × m this returns [A⁻¹ | A⁻¹B]: the inverse is built in
    place (a pivot's column turns into the inverse's column), so no identity block is
    carried along. Vectorised over the batch (batch axis moved last, one fused update per
    pivot). No pivoting: meant for matrices that need none (symmetric positive definite,
    or diagonally dominant); a zero pivot gives non-finite values, for the caller to
    report.
    """
    aug = jnp.moveaxis(a, 0, -1)
    for k in range(m):
        inv = 1 / aug[k, k]
        row = aug[k] * inv[None]
        # Row i ≠ k loses aug[i, k] times row k; column k becomes −aug[i, k] / pivot.
        update = aug - aug[:, k][:, None] * row.at[k].add(inv)[None]
        aug = update.at[k].set(row.at[k].set(inv))
    return jnp.moveaxis(aug, -1, 0)
