"""Levenberg–Marquardt on the block-banded structure that an action summed over time has.

The action is a sum of squares, A = Σ_n |m_n|² + Σ_n |r_n|², where
the node residual m_n (the measurements at time n) depends on the state s_n only and the
interval residual r_n (one model step) on s_n and s_{n+1} only, both also on the global
parameters θ. So the Gauss–Newton matrix JᵀJ is block tridiagonal in time, bordered by
the θ rows. It is assembled from 2·dim + n_params Jacobian-vector products (the states
of even and of odd times never share a residual, so two colours suffice), and the damped
system (JᵀJ + λ diag JᵀJ) δ = −Jᵀr is solved by block elimination forward in time, with a
Schur complement for θ: O(N dim³) work instead of O((N dim)³).

A box on the unknowns (`problem.bounds()`) is kept by the steps themselves (a projected
Levenberg–Marquardt step with an active set), not by a change of variables.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree

from ..._linalg import gauss_jordan
from ._base import AbstractMinimiser, StepInfo, action_errors, flat_bounds, projected_gradient


class LevenbergMarquardt(AbstractMinimiser):
    r"""Levenberg–Marquardt on the action's residuals, with block-banded linear algebra.

    For problems whose action is a sum of squares of residuals local in time (an
    [`deepest.AbstractBandedProblem`][]), e.g. [`deepest.Assimilation`][].
    Each step solves

    $$(J^\top J + λ\,\mathrm{diag}(J^\top J))\,δ = −J^\top r$$

    by block elimination over time (J^T J is block tridiagonal, bordered by the
    parameters), with λ = `damping` / s and the trust-region size s of
    `optimistix.ClassicalTrustRegion` (Marquardt's scaling makes λ independent of
    the units of the unknowns). Converges in far fewer steps than L-BFGS; each step costs
    O(N_model · dim³).

    With a box on the unknowns (`problem.bounds()`), an unknown at a bound whose gradient
    pushes out of the box is held there (its row and column dropped from the system, so the
    solve stays banded and O(N_model · dim³)), the step of the others is projected into
    the box, and the trust region judges that projected step by the reduction it predicts
    (a step whose projection predicts a rise is kept only where the action does not rise).
    Every iterate lies in the box, and the gradient reported to the annealing loop is the
    projected one, zero at a KKT point of the box.

    **Arguments:**

    - `damping`: λ at unit trust-region size (> 0); small values start near Gauss–Newton.
    - `max_rejections`: the steps the trust region may reject in a row before it gives up
      at a β (stop reason `stalled`; ≥ 1).
    """

    damping: float = eqx.field(default=1e-3, static=True)
    max_rejections: int = eqx.field(default=30, static=True)

    def __check_init__(self):
        if not self.damping > 0:
            raise ValueError(f"`damping` must be positive; got {self.damping}.")
        if int(self.max_rejections) != self.max_rejections or self.max_rejections < 1:
            raise ValueError(
                f"`max_rejections` must be a positive integer; got {self.max_rejections}."
            )

    def check(self, problem):
        if problem.banded_shape is None:
            raise ValueError(
                f"LevenbergMarquardt needs a problem with banded residuals (a "
                f"deepest.AbstractBandedProblem); {type(problem).__name__} is not one. "
                f"Use deepest.LBFGS()."
            )

    def flatten(self, problem, unknowns):
        states, params = problem.to_banded(unknowns)
        return jnp.concatenate([states.reshape(-1), params])

    def _split(self, problem, y):
        n, d, _ = problem.banded_shape
        return y[: n * d].reshape(n, d), y[n * d :]

    def unflatten(self, problem, y):
        return problem.from_banded(*self._split(problem, y))

    def prepare(self, problem, y0, rf_table, factors):
        # the box in the flat layout, shared by every lane; None (as before) without one
        return flat_bounds(self, problem, y0.dtype)

    def solver_and_fn(self, problem, bounds=None):
        """The optimistix solver of one β and its residual function `fn(y, rf)`, for the
        flat box `bounds` = (lower, upper) or `None`."""

        def fn(y, rf):
            states, params = self._split(problem, y)
            u = problem.from_banded(states, params)
            return problem.banded_residuals(states, params, rf), action_errors(problem, u)

        n, d, p = problem.banded_shape
        descent = _BandedDampedNewton(n, d, p, self.damping, bounds)
        return _BandedLevenbergMarquardt(descent), fn

    def _fresh(self, problem, y, rf, bounds):
        solver, fn = self.solver_and_fn(problem, bounds)
        f_struct, aux_struct = jax.eval_shape(fn, y, rf)
        return solver.init(fn, y, rf, {}, f_struct, aux_struct, frozenset())

    def init(self, problem, y, rf0, shared):
        return _LMLane(
            inner=self._fresh(problem, y, rf0, shared),
            first=jnp.array(True),
            rejections=jnp.array(0, jnp.int32),
            action=jnp.array(jnp.inf, y.dtype),
        )

    def restart(self, problem, done, y, rf, beta, state, shared):
        # Only the small leaves of a fresh state are taken: the first step after it is
        # accepted unconditionally and recomputes the blocks.
        fresh = self._fresh(problem, y, rf, shared)
        inner = jtu.tree_map(
            lambda a, b: jnp.where(done, a, b) if eqx.is_array(a) and a.ndim <= 1 else b,
            fresh,
            state.inner,
        )
        return _LMLane(
            inner=inner,
            first=jnp.where(done, True, state.first),
            rejections=jnp.where(done, 0, state.rejections),
            action=jnp.where(done, jnp.inf, state.action),
        )

    def step(self, problem, y, rf, beta, loop_step, state, shared):
        solver, fn = self.solver_and_fn(problem, shared)
        y, inner, _ = solver.step(fn, y, rf, {}, state.inner, frozenset())
        accepted = solver.accepted_steps(inner) > solver.accepted_steps(state.inner)
        residual, grad, errors = solver.accepted_point(inner)
        action = sum(jnp.sum(r**2) for r in jtu.tree_leaves(residual))
        rejections = jnp.where(accepted, 0, state.rejections + 1)
        failed = (rejections >= self.max_rejections) | (
            solver.result(inner) != optx.RESULTS.successful
        )
        grad = 2 * grad
        if shared is not None:
            grad = projected_gradient(y, grad, *shared)
        info = StepInfo(
            accepted=accepted,
            first=state.first,
            action=action,
            grad=grad,
            errors=errors,
            # No model of the remaining decrease: the last one stands in for it.
            predicted_decrease=jnp.where(accepted & ~state.first, state.action - action, jnp.inf),
            failed=failed,
        )
        new = _LMLane(inner, state.first & ~accepted, rejections, action)
        return y, new, info


class _LMLane(eqx.Module):
    inner: PyTree
    first: Bool[Array, ""]
    rejections: Int[Array, ""]
    action: Float[Array, ""]


# -- the banded Gauss–Newton descent ----------------------------------------------------


class _BandedNormal(eqx.Module):
    """JᵀJ in blocks, and Jᵀr, at the last accepted point (and the point itself, `y`,
    where a box needs it; `None` otherwise)."""

    diagonal: Float[Array, "n d d"]
    off: Float[Array, "n-1 d d"]
    border: Float[Array, "n d p"]
    corner: Float[Array, "p p"]
    grad: Float[Array, " size"]
    y: Float[Array, " size"] | None = None


def _blocks(jac, n: int, d: int, p: int, dtype, axis: int = -1):
    """The Jacobian's blocks from 2d + p products: states of even and odd times never
    share a residual, so one product per (parity, component) finds all their columns.

    The products come out probe-major, (2d + p, n, q) and (2d + p, n − 1, k); the colours
    are selected there and only then moved to the block layout: to `axis` (−1: the
    residuals' rows before the unknowns', (n, q, d); −2: after, (n, d, q)). (Selecting after moving
    the probe axis last made XLA:CPU fuse the Jacobian-vector products into strided,
    unvectorised transposes, several times slower.)"""
    parity = (jnp.arange(n) % 2)[None, :, None] == jnp.arange(2)[:, None, None]
    states = parity[:, None] & (
        jnp.arange(d)[None, :, None, None] == jnp.arange(d)[None, None, None, :]
    )
    states = states.astype(dtype).reshape(2 * d, n * d)  # (colour, component) rows
    probes = jnp.concatenate(
        [
            jnp.concatenate([states, jnp.zeros((2 * d, p), dtype)], axis=1),
            jnp.concatenate([jnp.zeros((p, n * d), dtype), jnp.eye(p, dtype=dtype)], axis=1),
        ]
    )
    nodes, intervals = jax.vmap(jac.mv)(probes)  # (2d + p, n, q), (2d + p, n − 1, k)
    even = (jnp.arange(n) % 2 == 0)[None, :, None]
    node_jac = jnp.where(even, nodes[:d], nodes[d : 2 * d])  # (d, n, q)
    first = jnp.where(even[:, :-1], intervals[:d], intervals[d : 2 * d])  # ∂r_n/∂s_n
    second = jnp.where(even[:, :-1], intervals[d : 2 * d], intervals[:d])  # ∂r_n/∂s_{n+1}
    blocks = node_jac, first, second, nodes[2 * d :], intervals[2 * d :]
    return tuple(jnp.moveaxis(b, 0, axis) for b in blocks)  # (n, q, d), (n − 1, k, d), …


def _tmul(a, b):
    """aᵀb block by block over the leading axes, as an unrolled sum over the contracted
    rows of broadcast products: one vectorised loop, where XLA:CPU runs a batched dot of
    tiny matrices one small call per block (slower here)."""
    out = 0
    for c in range(a.shape[-2]):
        out = out + a[..., c, :, None] * b[..., c, None, :]
    return out


def banded_normal_equations(
    jac, residual, n: int, d: int, p: int, dtype, one_lane: bool = False
) -> _BandedNormal:
    """JᵀJ in blocks (diagonal (n, d, d), off-diagonal (n − 1, d, d), border (n, d, p),
    corner (p, p)) and the gradient Jᵀr, of banded residuals `residual = (node, interval)`
    with Jacobian `jac` (a linear operator with `mv`), n times, d states per time and p
    parameters.

    The block products are unrolled broadcast sums (`_tmul`), fastest for many lanes
    under `vmap`; `one_lane=True` makes them batched dots over the residuals' rows laid
    last (four times faster for a single lane on XLA:CPU)."""
    m, r = residual
    if one_lane:
        return _one_lane_normal_equations(jac, m, r, n, d, p, dtype)
    node_jac, first, second, node_params, interval_params = _blocks(jac, n, d, p, dtype)
    diagonal = (
        _tmul(node_jac, node_jac).at[:-1].add(_tmul(first, first)).at[1:].add(_tmul(second, second))
    )
    off = _tmul(first, second)
    # the border and the gradient together: the parameters' columns and the residual
    node_cols = jnp.concatenate([node_params, m[..., None]], axis=-1)  # (n, q, p + 1)
    interval_cols = jnp.concatenate([interval_params, r[..., None]], axis=-1)

    def cols(a, b):  # aᵀb for the few columns of b, one column at a time
        return jnp.stack([_tmul(a, b[..., j : j + 1])[..., 0] for j in range(p + 1)], axis=-1)

    border_grad = (
        cols(node_jac, node_cols)
        .at[:-1]
        .add(cols(first, interval_cols))
        .at[1:]
        .add(cols(second, interval_cols))
    )  # (n, d, p + 1)
    corner = jnp.einsum("nki,nkj->ij", node_params, node_params) + jnp.einsum(
        "nki,nkj->ij", interval_params, interval_params
    )
    grad_p = jnp.einsum("nki,nk->i", node_params, m) + jnp.einsum("nki,nk->i", interval_params, r)
    grad = jnp.concatenate([border_grad[..., p].reshape(-1), grad_p])
    return _BandedNormal(diagonal, off, border_grad[..., :p], corner, grad)


def _one_lane_normal_equations(jac, m, r, n, d, p, dtype) -> _BandedNormal:
    """`banded_normal_equations` for one lane: the blocks with the residuals' rows last,
    (n, d, q), so that each product is a batched dot over contiguous rows."""
    # the barrier keeps XLA from fusing the Jacobian's products into the dots' operands
    # (recomputed per output element there: several times slower)
    blocks = jax.lax.optimization_barrier(_blocks(jac, n, d, p, dtype, -2))
    node_jac, first, second, node_params, interval_params = blocks

    def t(a, b):
        return jnp.einsum("niq,njq->nij", a, b)

    def tv(a, v):
        return jnp.einsum("niq,nq->ni", a, v)

    diagonal = t(node_jac, node_jac).at[:-1].add(t(first, first)).at[1:].add(t(second, second))
    border = t(node_jac, node_params).at[:-1].add(t(first, interval_params))
    border = border.at[1:].add(t(second, interval_params))
    grad_s = tv(node_jac, m).at[:-1].add(tv(first, r)).at[1:].add(tv(second, r))
    corner = jnp.einsum("niq,njq->ij", node_params, node_params) + jnp.einsum(
        "niq,njq->ij", interval_params, interval_params
    )
    grad_p = jnp.einsum("niq,nq->i", node_params, m) + jnp.einsum("niq,nq->i", interval_params, r)
    grad = jnp.concatenate([grad_s.reshape(-1), grad_p])
    return _BandedNormal(diagonal, t(first, second), border, corner, grad)


def solve_by_elimination(aug: Float[Array, "m m+w"], m: int) -> Float[Array, "m w"]:
    """[A | B] → A⁻¹B for a small A (m × m) that needs no pivoting (symmetric positive
    definite): Gauss–Jordan that drops each pivot's column once it is eliminated, so the
    width shrinks from m + w to w and A⁻¹ itself is never formed."""
    for k in range(m):
        col = aug[:, 0]
        row = aug[k, 1:] / col[k]
        aug = (aug[:, 1:] - col[:, None] * row[None]).at[k].set(row)
    return aug


def _matmul(a, b):
    """a @ b for small matrices, as an unrolled sum of broadcast products (see `_tmul`)."""
    out = 0
    for c in range(a.shape[-1]):
        out = out + a[..., :, c, None] * b[..., c, None, :]
    return out


def solve_block_tridiagonal(
    diagonal: Float[Array, "n d d"],
    off: Float[Array, "n-1 d d"],
    border: Float[Array, "n d p"],
    corner: Float[Array, "p p"],
    rhs_states: Float[Array, "n d"],
    rhs_params: Float[Array, " p"],
) -> tuple[Float[Array, "n d"], Float[Array, " p"]]:
    """Solve the symmetric positive definite bordered block-tridiagonal system

        [T   B] [x]   [a]
        [Bᵀ  C] [θ] = [b],   T = tridiag(offᵀ, diagonal, off),

    by block elimination forward in time (S_0 = D_0, S_n = D_n − O_{n−1}ᵀ S_{n−1}⁻¹ O_{n−1},
    each S_n positive definite), back substitution for T⁻¹[a | B], and the Schur
    complement C − Bᵀ T⁻¹ B for θ. Each step eliminates [S_n | a_n, B_n | O_n] in one
    Gauss–Jordan sweep (`solve_by_elimination`) in plain XLA operations rather than LAPACK (see
    `_linalg.py`: batched LAPACK calls deadlock in programs sharded over several CPU
    devices, and are no faster on blocks this small); the small products are unrolled
    broadcast sums (`_matmul`).

    **Returns:** `(x, θ)`.
    """
    d = diagonal.shape[-1]
    p = corner.shape[0]
    rhs = jnp.concatenate([rhs_states[:, :, None], border], axis=2)  # (n, d, 1 + p)
    off_next = jnp.concatenate([off, jnp.zeros_like(diagonal[:1])])
    off_prev = jnp.concatenate([jnp.zeros_like(diagonal[:1]), off])

    def forward(carry, block):
        # carry: S⁻¹[a | B | O] of the previous time (a and B as updated), i.e. [y | g]
        diag, rhs_n, o_prev, o_next = block
        u = _matmul(o_prev.T, carry)
        aug = jnp.concatenate([diag - u[:, 1 + p :], rhs_n - u[:, : 1 + p], o_next], axis=1)
        solved = solve_by_elimination(aug, d)
        return solved, solved

    start = jnp.zeros((d, 1 + p + d), diagonal.dtype)
    _, solved = jax.lax.scan(forward, start, (diagonal, rhs, off_prev, off_next))
    y, g = solved[..., : 1 + p], solved[..., 1 + p :]

    def backward(z_next, block):
        g_n, y_n = block
        z = y_n - _matmul(g_n, z_next)
        return z, z

    _, z = jax.lax.scan(backward, jnp.zeros_like(y[0]), (g, y), reverse=True)
    z_a, z_b = z[:, :, 0], z[:, :, 1:]  # T⁻¹a, T⁻¹B
    if not p:
        return z_a, rhs_params
    schur = corner - jnp.einsum("nip,niq->pq", border, z_b)
    rhs_theta = rhs_params - jnp.einsum("nip,ni->p", border, z_a)
    theta = gauss_jordan(jnp.concatenate([schur, rhs_theta[:, None]], axis=1)[None], p)[0, :, p]
    return z_a - z_b @ theta, theta


def _restricted(normal: _BandedNormal, free: Bool[Array, " size"]) -> _BandedNormal:
    """The blocks of the system on the `free` unknowns alone: the rows and columns of the
    others zeroed and their diagonal entries set to one, so that the banded solve gives
    them a zero step (with a zero right-hand side) and its cost is unchanged."""
    n, d, _ = normal.diagonal.shape
    free = free.astype(normal.grad.dtype)
    fs, fp = free[: n * d].reshape(n, d), free[n * d :]
    unit = jax.vmap(jnp.diag)(1 - fs)
    return _BandedNormal(
        normal.diagonal * fs[:, :, None] * fs[:, None, :] + unit,
        normal.off * fs[:-1, :, None] * fs[1:, None, :],
        normal.border * fs[:, :, None] * fp[None, None, :],
        normal.corner * fp[:, None] * fp[None, :] + jnp.diag(1 - fp),
        normal.grad * free,
    )


def _into_box(y, delta, lower, upper):
    """The step from `y` to the projection of y + δ onto the box [lower, upper]. The
    solver forms y + δ itself, so rounding could carry it just past a bound: there δ moves
    one unit in the last place inwards (enough, as |fl(y + (a − y)) − a| ≤ ½ulp(a − y))."""
    delta = jnp.clip(y + delta, lower, upper) - y
    delta = jnp.where(y + delta > upper, jnp.nextafter(delta, -jnp.inf), delta)
    return jnp.where(y + delta < lower, jnp.nextafter(delta, jnp.inf), delta)


class _BandedDampedNewton(optx.AbstractDescent):
    """Marquardt-scaled damped Gauss–Newton steps with the banded solve; with a box
    `bounds` = (lower, upper) in the flat layout, projected steps with an active set."""

    n: int = eqx.field(static=True)
    d: int = eqx.field(static=True)
    p: int = eqx.field(static=True)
    damping: float = eqx.field(static=True)
    bounds: tuple[Float[Array, " size"], Float[Array, " size"]] | None = None

    def init(self, y, f_info_struct):
        dtype = y.dtype
        n, d, p = self.n, self.d, self.p
        return _BandedNormal(
            jnp.zeros((n, d, d), dtype),
            jnp.zeros((n - 1, d, d), dtype),
            jnp.zeros((n, d, p), dtype),
            jnp.zeros((p, p), dtype),
            jnp.zeros_like(y),
            None if self.bounds is None else jnp.zeros_like(y),
        )

    def query(self, y, f_info, state):
        normal = banded_normal_equations(
            f_info.jac, f_info.residual, self.n, self.d, self.p, y.dtype
        )
        return normal if self.bounds is None else dataclasses.replace(normal, y=y)

    def step(self, step_size, state: _BandedNormal):
        n, d = self.n, self.d
        tiny = jnp.finfo(state.grad.dtype).tiny
        lam = self.damping / jnp.maximum(step_size, tiny)
        diag_s = jnp.diagonal(state.diagonal, axis1=1, axis2=2)
        diag_p = jnp.diagonal(state.corner)
        # Marquardt's scaling, floored so that an unknown no residual sees stays put.
        floor = jnp.finfo(state.grad.dtype).eps * jnp.maximum(
            jnp.max(diag_s), jnp.max(diag_p, initial=0.0)
        )
        scale_s = jnp.maximum(diag_s, floor) + tiny
        scale_p = jnp.maximum(diag_p, floor) + tiny
        if self.bounds is None:
            system = state
        else:
            # The active set: at a bound with the gradient pushing out, exactly the entries
            # that `projected_gradient` zeroes.
            free = projected_gradient(state.y, state.grad, *self.bounds) == state.grad
            system = _restricted(state, free)
        diagonal = system.diagonal + lam * jax.vmap(jnp.diag)(scale_s)
        corner = system.corner + lam * jnp.diag(scale_p)
        grad_s, grad_p = system.grad[: n * d].reshape(n, d), system.grad[n * d :]
        x, theta = solve_block_tridiagonal(
            diagonal, system.off, system.border, corner, -grad_s, -grad_p
        )
        newton = jnp.concatenate([x.reshape(-1), theta])
        if self.bounds is None:
            return newton, optx.RESULTS.successful
        # The step taken is the projected one: the trust region judges it by the reduction
        # that it predicts, since it is what the solver adds to y.
        return _into_box(state.y, newton, *self.bounds), optx.RESULTS.successful


class _BoxTrustRegion(optx.ClassicalTrustRegion):
    """`optx.ClassicalTrustRegion` for projected steps. Projecting a Gauss–Newton step can
    spoil it, so that the model predicts a rise; such a step is taken to predict no
    change: accepted only where the action does not rise, the region shrinking otherwise
    (where the region would keep the step if the action rose by less than a hundredth of
    the prediction). As the region shrinks the step turns into the projected, scaled
    gradient step, which lowers the action wherever the point is not a KKT point."""

    def predict_reduction(self, y_diff, f_info):
        return jnp.minimum(super().predict_reduction(y_diff, f_info), 0.0)


class _BandedLevenbergMarquardt(optx.AbstractGaussNewton):
    rtol: float
    atol: float
    norm: object
    descent: _BandedDampedNewton
    search: optx.ClassicalTrustRegion
    verbose: object

    def __init__(self, descent: _BandedDampedNewton):
        self.rtol = 0.0
        self.atol = 0.0
        self.norm = optx.max_norm
        self.descent = descent
        self.search = optx.ClassicalTrustRegion() if descent.bounds is None else _BoxTrustRegion()
        self.verbose = lambda **kwargs: None

    # What `LevenbergMarquardt.step` reads of a state of this solver, in one place: the
    # fields of optimistix's Gauss–Newton state that this subclass relies on.

    def accepted_steps(self, state) -> Int[Array, ""]:
        """The number of accepted steps so far."""
        return state.num_accepted_steps

    def accepted_point(self, state) -> tuple[PyTree[Array], Float[Array, " n"], PyTree]:
        """At the last accepted point: the residuals, Jᵀr (half the action's gradient, from
        this solver's own descent) and the residual function's auxiliary output."""
        descent: _BandedNormal = state.descent_state
        return state.f_info.residual, descent.grad, state.aux

    def result(self, state) -> optx.RESULTS:
        """The trust region's or the descent's failure code (successful if none)."""
        return state.result
