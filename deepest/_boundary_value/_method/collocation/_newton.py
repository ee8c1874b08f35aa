"""Newton's method on the collocation equations, with the Jacobian's block factorisation,
and the implicit-function-theorem derivative at the root."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array

from ...._linalg import gauss_jordan
from ...._results import RESULTS
from ._lobatto import collocation_jacobian, collocation_residual


class Factors(eqx.Module):
    """The structured factorisation of the collocation Jacobian (see `factorise`)."""

    inv_gz: Array  # G_z⁻¹ per interval
    inv_gz_gy: Array  # G_z⁻¹ G_y per interval
    e_z: Array  # ∂(continuity)/∂Z per interval
    s: Array  # S_n: δy_{n+1} = S_n δy_n + r_n
    phi: Array  # Φ_n = S_n ⋯ S_0: δy_{n+1} = Φ_n δy_0 + ψ_{n+1}
    b1: Array  # ∂(boundary)/∂y_N
    inv_m: Array  # (B_0 + B_1 Φ_N)⁻¹


def factorise(blocks, dim) -> Factors:
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
    # reports (`RESULTS.nonfinite`) and mesh refinement does not hide.
    local = gauss_jordan(jnp.concatenate([g_z, g_y], axis=-1), s5)
    inv_gz, inv_gz_gy = local[..., :s5], local[..., s5:]
    s = e_y - e_z @ inv_gz_gy

    def product(phi, s_n):
        phi = s_n @ phi
        return phi, phi

    _, phi = jax.lax.scan(product, jnp.eye(s2, dtype=s.dtype), s)
    b0, b1 = bjac[:, :s2], bjac[:, s2:]
    inv_m = jnp.linalg.inv(b0 + b1 @ phi[-1])
    return Factors(inv_gz, inv_gz_gy, e_z, s, phi, b1, inv_m)


def apply_factors(factors: Factors, residual):
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


def newton(problem, mesh, nodes, has_jumps, ys, zs, factors, tol, max_newton_steps):
    """Newton's method on one mesh, reusing the factorised Jacobian while it contracts well.

    A fresh Jacobian is factorised at the first iteration and whenever the previous step
    shrank by less than a factor 4 (simplified Newton otherwise, as scipy's `solve_bvp`
    also reuses its Jacobian): near the root a step then costs one residual evaluation.

    Why not `optimistix.root_find`: `optx.Newton` refactorises every step and `optx.Chord`
    never does; neither has this reuse-while-contracting rule, and the solve's cost is
    mostly fresh factorisations (a reusing step costs a fraction of a fresh one, and near
    the root most steps reuse; the measurements are in BENCHMARKS.md). Passing the
    structured factorisation through lineax would also need a custom operator and solver
    around the same code.

    **Returns:** `(ys, zs, factors, result, steps)`.
    """

    def cond(carry):
        step, *_, done, _ = carry
        return (step < max_newton_steps) & ~done

    def body(carry):
        step, ys, zs, factors, refactor, last, _, _ = carry

        def fresh(_):
            residual, blocks = collocation_jacobian(problem, mesh, nodes, has_jumps, ys, zs)
            return residual, factorise(blocks, problem.dim)

        def reuse(factors):
            return collocation_residual(problem, mesh, nodes, has_jumps, ys, zs), factors

        residual, factors = jax.lax.cond(refactor, fresh, reuse, factors)
        dys, dzs = apply_factors(factors, residual)
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
    result = RESULTS.where(done, RESULTS.successful, RESULTS.nonlinear_max_steps_reached)
    result = RESULTS.where(finite, result, RESULTS.nonfinite)
    return ys, zs, factors, result, steps


@eqx.filter_custom_jvp
def at_root(dynamic, static, mesh, has_jumps, ys, zs):
    """The root (ys, zs) of the collocation equations, as a function of the problem.

    Its value is the root found by Newton; its derivative is the implicit function
    theorem's, δu = −J⁻¹ (∂R/∂θ) δθ, with J factorised at the root (only when differentiated,
    so the solve itself pays nothing for it).
    """
    del dynamic, static, mesh, has_jumps
    return ys, zs


@at_root.def_jvp
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
        return collocation_residual(problem, mesh, problem.node_times(), has_jumps, ys, zs)

    _, d_residual = jax.jvp(residual, (dynamic,), (t_dynamic,))
    problem = eqx.combine(dynamic, static)
    _, blocks = collocation_jacobian(problem, mesh, problem.node_times(), has_jumps, ys, zs)
    factors = factorise(blocks, problem.dim)
    return (ys, zs), apply_factors(factors, d_residual)
