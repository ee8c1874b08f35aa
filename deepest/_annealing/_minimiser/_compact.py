"""A compact-form L-BFGS built for many lanes: one lane per path under `jax.vmap`.

Directions. The inverse Hessian of L-BFGS with H₀ = γI has the compact representation of
Byrd, Nocedal & Schnabel (1994, Theorem 2.2),

    H = γI + [S  γY] W [S  γY]ᵀ,   W = [[R⁻ᵀ(Dₛ + γYᵀY)R⁻¹, −R⁻ᵀ], [−R⁻¹, 0]],

with the m stored pairs as the rows of S and Y, R the upper triangle of SᵀY in the order
the pairs were made and Dₛ its diagonal. A direction −Hg then reads the (m, n) memories
twice: once for the products [S; Y]·[g, s, y] (which also give the new row and column of
SᵀY and YᵀY, BNS §4), once for [S; Y]ᵀw. Everything else is m × m. The two-loop
recursion (optax, optimistix) reads them 4m times in dependent passes, which under `vmap`
is bound by memory traffic (BENCHMARKS.md).

Shared slots. Every lane writes its pair to the slot `loop_step mod m`, so under `vmap`
the slot is one scalar and the memories are written by slicing. A lane with no new pair
(a rejected trial, or a pair of non-positive curvature) marks its slot empty; empty slots
are masked out of the small matrices, so stale memory rows never enter a direction.

Preconditioning. For problems with banded residuals the pairs live in the variables
z = Lᵀx, with LLᵀ = M the per-component tridiagonal part of the action's Gauss–Newton
matrix at the β: the measurement term's plus R_f times the model term's
(`TridiagonalPreconditioner`, `gauss_newton_tridiagonal`). The action's curvature spans
the R_m and R_f scales, up to 10⁹ apart across β; in z it is near one, and the first step
of each β, −M⁻¹g, is near a Newton step. Without banded residuals M = I and the first step
is −g/‖g‖, as scipy's L-BFGS-B takes.

Line search. One trial point per loop step (one evaluation): a weak-Wolfe bracketing
search (Armijo's decrease, c₁ = 1e-4, and the curvature condition gᵀd ≥ c₂ g₀ᵀd, c₂ = 0.9),
halving (or interpolating) when the decrease fails and doubling when the slope is still
steep, as in Lewis & Overton (2013). An accepted pair then always has sᵀy > 0.

Bounds. With a box l ≤ x ≤ u (`Schedule.bounds`) the steps are those of a projected
quasi-Newton method with an active set (Bertsekas 1982; Kim, Sra & Dhillon 2010): as in
L-BFGS-B, the box is kept by the steps themselves. The active set A at a point holds the
entries at a bound whose gradient pushes out of the box. The gradient given to the compact
direction is zero on A (before the preconditioner's L⁻¹), and the direction, back in x, is
zero on A and on the entries at a bound that it would push out: d_F = −(H g)_F on the free
entries F, and gᵀd ≤ g_zᵀd_z < 0, a descent direction wherever the projected gradient is
not zero. The pairs are the steps taken and the gradient changes on F (zero on the new
point's A): secant pairs of the action on the free entries, so that H learns the inverse
of the reduced Hessian, not the sub-block of the whole one's inverse (with the whole
gradient change, a preconditioned run whose bounds held states inside the time window
crawled linearly, ~400 evaluations at one β instead of ~20). The trial points are
P(y + αd), the projection onto the box; Armijo's decrease is measured along that path,
f ≤ f₀ + c₁ gᵀ(P(y + αd) − y) with gᵀ(P(y + αd) − y) < 0 (a step that rounding or the
box leaves without descent is rejected), and the curvature condition applies only where
the projection changed nothing (dropping it with bounds saved 4% of the evaluations on
the tests' problems: kept, so that an unprojected step is judged as without bounds).
Pairs are stored only where sᵀy > 0, as without bounds. The gradient reported to the
annealing loop is the projected one, zero at a KKT point of the box. Without bounds
(`Schedule.bounds` None) none of this is traced: the program is the unbounded one.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._base import StepInfo, projected_gradient


def _triangular_solve(r: Float[Array, "m m"], b: Float[Array, " m"], *, transpose: bool):
    """Solve R u = b (or Rᵀu = b) for upper-triangular R by substitution (no LAPACK: see
    `_linalg.py`; these systems are m × m). Products as multiply-and-sum: under `vmap`
    XLA:CPU runs a batch of tiny dots one by one, far slower."""
    m = r.shape[0]
    a = r.T if transpose else r
    order = range(m) if transpose else range(m - 1, -1, -1)
    u = jnp.zeros_like(b)
    for i in order:
        u = u.at[i].set((b[i] - jnp.sum(a[i] * u)) / a[i, i])
    return u


def compact_direction(
    g: Float[Array, " n"],
    s_mem: Float[Array, "m n"],
    y_mem: Float[Array, "m n"],
    sy: Float[Array, "m m"],
    yy: Float[Array, "m m"],
    valid: Bool[Array, " m"],
    newest: Int[Array, ""],
    gamma: Float[Array, ""],
    products: tuple[Float[Array, " m"], Float[Array, " m"]] | None = None,
) -> Float[Array, " n"]:
    """−Hg for the compact L-BFGS inverse Hessian H = γI + [S γY] W [S γY]ᵀ (BNS 1994).

    The slots of the memories are a ring whose newest pair is `newest`; `sy[i, j]` holds
    s_iᵀy_j, `yy[i, j]` y_iᵀy_j, and slots with `valid` False are ignored. `products`,
    if given, are Sg and Yg already computed (with the new pair's products, in one pass).
    """
    m = s_mem.shape[0]
    dtype = g.dtype
    # Chronological order, oldest first: R is upper triangular in it.
    order = (jnp.asarray(newest, jnp.int32) + 1 + jnp.arange(m, dtype=jnp.int32)) % m
    valid = valid[order]
    sy = sy[order][:, order].astype(dtype)
    yy = yy[order][:, order].astype(dtype)
    both = valid[:, None] & valid[None, :]
    r = jnp.where(both & jnp.triu(jnp.ones((m, m), bool)), sy, 0) + jnp.diag(
        jnp.where(valid, 0, 1).astype(dtype)
    )
    if products is None:
        # Separate products, not one over a concatenation: that would copy the memories.
        products = (s_mem @ g.astype(s_mem.dtype), y_mem @ g.astype(s_mem.dtype))
    a = jnp.where(valid, products[0][order].astype(dtype), 0)
    b = jnp.where(valid, products[1][order].astype(dtype), 0)
    u = _triangular_solve(r, a, transpose=False)
    middle = jnp.where(both, gamma * yy, 0) + jnp.diag(jnp.where(valid, jnp.diagonal(sy), 0))
    w = _triangular_solve(r, jnp.sum(middle * u[None, :], axis=1) - gamma * b, transpose=True)
    w_s = jnp.zeros((m,), dtype).at[order].set(w).astype(s_mem.dtype)
    w_y = jnp.zeros((m,), dtype).at[order].set(-gamma * u).astype(s_mem.dtype)
    return -(gamma * g + (w_s @ s_mem + w_y @ y_mem).astype(dtype))


class TridiagonalPreconditioner(eqx.Module):
    """M_β = the per-component tridiagonal part of the action's Gauss–Newton matrix at
    each β, M = 2(C + f_β K) with C the measurement term's part and K the model term's at
    rf0, f_β = α^β; its Cholesky factors M = LLᵀ (L lower bidiagonal) for every β.

    For a problem with banded residuals the flat unknowns are `[states (N, d), params]`.
    Within one state component the Gauss–Newton matrix is exactly tridiagonal in time
    (an interval residual couples times n and n + 1 only): this is the stiff part of the
    action at large R_f, a discrete Laplacian in time. The couplings between components
    (through ∂F/∂x, of size h·|∂F/∂x|) and between states and parameters are left to
    L-BFGS; the parameters get the diagonal. Built once per run from one path's initial
    point and shared by every lane.
    """

    diagonal: Float[Array, "n_beta N d"]  # L's diagonal
    lower: Float[Array, "n_beta N-1 d"]  # L's subdiagonal
    params: Float[Array, "n_beta p"]  # 1/√M for the parameters

    @staticmethod
    def build(problem, unknowns, rf0, factors):
        """The factors at every β, from one path's `unknowns` of a banded `problem`."""
        if problem.banded_shape is None:
            raise TypeError(
                f"The tridiagonal preconditioner needs a problem with banded residuals (a "
                f"deepest.AbstractBandedProblem: `banded_shape` not None); got "
                f"{type(problem).__name__}."
            )
        meas, model, model_off, meas_p, model_p = gauss_newton_tridiagonal(problem, unknowns, rf0)
        f = factors[:, None, None]
        diag = 2 * (meas[None] + f * model[None])
        diag = diag + jnp.finfo(diag.dtype).eps * jnp.max(diag, axis=(1, 2), keepdims=True)
        off = 2 * f * model_off[None]

        def cholesky(diag, off):  # one β: (N, d), (N − 1, d)
            def body(l_prev, row):
                d, o = row
                e = o / l_prev
                l_next = jnp.sqrt(jnp.maximum(d - e**2, jnp.finfo(d.dtype).eps * d))
                return l_next, (l_next, e)

            l0 = jnp.sqrt(diag[0])
            _, (rest, e) = jax.lax.scan(body, l0, (diag[1:], off))
            return jnp.concatenate([l0[None], rest]), e

        diagonal, lower = jax.vmap(cholesky)(diag, off)
        dp = 2 * (meas_p[None] + factors[:, None] * model_p[None])
        floor = jnp.finfo(dp.dtype).eps * jnp.max(dp, axis=1, keepdims=True, initial=0.0)
        params = jax.lax.rsqrt(jnp.maximum(dp, floor) + jnp.finfo(dp.dtype).tiny)
        return TridiagonalPreconditioner(diagonal, lower, params)

    def _split(self, v):
        n, d = self.diagonal.shape[1:]
        return v[: n * d].reshape(n, d), v[n * d :]

    def gradient(self, beta, g):
        """L⁻¹g: a gradient (or gradient change) in the variables z = Lᵀx."""
        ld, le = self.diagonal[beta], self.lower[beta]
        gs, gp = self._split(g)
        a = jnp.concatenate([jnp.zeros_like(ld[:1]), -le / ld[1:]])
        z = _linear_recurrence(a, gs / ld)
        return jnp.concatenate([z.reshape(-1), gp * self.params[beta]])

    def step(self, beta, s):
        """Lᵀs: a step in the variables z."""
        ld, le = self.diagonal[beta], self.lower[beta]
        ss, sp = self._split(s)
        zs = (ld * ss).at[:-1].add(le * ss[1:])
        return jnp.concatenate([zs.reshape(-1), sp / self.params[beta]])

    def direction(self, beta, z):
        """L⁻ᵀz: a direction in z back in x."""
        ld, le = self.diagonal[beta], self.lower[beta]
        zs, zp = self._split(z)
        a = jnp.concatenate([-le / ld[:-1], jnp.zeros_like(ld[:1])])
        xs = _linear_recurrence(a, zs / ld, reverse=True)
        return jnp.concatenate([xs.reshape(-1), zp * self.params[beta]])


def _linear_recurrence(a, b, reverse=False):
    """x_n = a_n x_{n−1} + b_n along axis 0 (a_0 = 0); with `reverse`, x_n = a_n x_{n+1} + b_n
    from the last n down (a_{N−1} = 0).

    A sequential `lax.scan` on a CPU, a parallel prefix scan elsewhere. On one CPU core the
    prefix scan's log₂N passes over the whole array cost more than N dependent steps on
    rows that stay in cache (25 + 34 µs against 24 + 28 µs per lane for the two solves of
    a 64-lane step; `lax.linalg.tridiagonal_solve`, LAPACK's gtsv, 79 + 76 µs); on a GPU
    the N dependent steps would each be a launch-bound loop iteration.
    """

    def sequential(a, b):
        def step(x, ab):
            x = ab[0] * x + ab[1]
            return x, x

        return jax.lax.scan(step, jnp.zeros_like(b[0]), (a, b), reverse=reverse)[1]

    def parallel(a, b):
        def combine(earlier, later):
            a1, b1 = earlier
            a2, b2 = later
            return a1 * a2, a2 * b1 + b2

        return jax.lax.associative_scan(combine, (a, b), reverse=reverse)[1]

    return jax.lax.platform_dependent(a, b, cpu=sequential, default=parallel)


class CompactLBFGSState(eqx.Module):
    """One lane of the compact L-BFGS (see the module notes)."""

    direction: Float[Array, " n"]
    slope: Float[Array, ""]  # gᵀd at the accepted point
    step_size: Float[Array, ""]
    low: Float[Array, ""]  # the line search's bracket
    high: Float[Array, ""]
    trials: Int[Array, ""]
    first: Bool[Array, ""]
    action: Float[Array, ""]
    grad: Float[Array, " n"]
    grad_z: Float[Array, " n"]  # the gradient in the preconditioned variables (projected)
    errors: PyTree[Array]
    s_mem: Float[Array, "m n"]
    y_mem: Float[Array, "m n"]
    sy: Float[Array, "m m"]
    yy: Float[Array, "m m"]
    valid: Bool[Array, " m"]
    gamma: Float[Array, ""]
    # Carried curvature: the measurement part of each y, and the schedule's R_f factor at
    # which each pair was made (carry runs; else empty).
    ym_mem: Float[Array, "m n"]
    made_at: Float[Array, " m"]
    grad_meas: Float[Array, " n"]


class Schedule(eqx.Module):
    """What every lane shares: the schedule's R_f factors α^β, the preconditioner, and the
    box (lower, upper) on the flat unknowns (`None`: no bounds)."""

    factors: Float[Array, " n_beta"]
    preconditioner: TridiagonalPreconditioner | None
    bounds: tuple[Float[Array, " n"], Float[Array, " n"]] | None = None


class CompactLBFGS(eqx.Module):
    """The solver of one lane; `deepest.LBFGS` holds its settings."""

    history_length: int = eqx.field(static=True)
    memory_dtype: jnp.dtype = eqx.field(static=True)
    carry: bool = eqx.field(static=True)
    armijo: float = eqx.field(static=True, default=1e-4)
    curvature: float = eqx.field(static=True, default=0.9)
    max_trials: int = eqx.field(static=True, default=20)

    def init(self, y, f_struct, errors_struct):
        """The state of a lane at the first point of β = 0."""
        dtype = y.dtype
        m, n = self.history_length, y.shape[0]
        mem = self.memory_dtype
        return CompactLBFGSState(
            direction=jnp.zeros_like(y),
            slope=jnp.zeros((), dtype),
            step_size=jnp.ones((), dtype),
            low=jnp.zeros((), dtype),
            high=jnp.full((), jnp.inf, dtype),
            trials=jnp.zeros((), jnp.int32),
            first=jnp.array(True),
            action=jnp.full((), jnp.inf, dtype),
            grad=jnp.zeros_like(y),
            grad_z=jnp.zeros_like(y),
            errors=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), errors_struct),
            s_mem=jnp.zeros((m, n), mem),
            y_mem=jnp.zeros((m, n), mem),
            sy=jnp.zeros((m, m), dtype),
            yy=jnp.zeros((m, m), dtype),
            valid=jnp.zeros((m,), bool),
            gamma=jnp.ones((), dtype),
            ym_mem=jnp.zeros((m, n) if self.carry else (0,), mem),
            made_at=jnp.ones((m,) if self.carry else (0,), dtype),
            grad_meas=jnp.zeros((n,) if self.carry else (0,), dtype),
        )

    def restart(self, done, state: CompactLBFGSState) -> CompactLBFGSState:
        """Where `done`, start the next β. Only small leaves change: the memories stay,
        masked by `valid` (or, carrying curvature, rebuilt at the next step)."""

        def pick(new, old):
            return jnp.where(done, new, old).astype(old.dtype)

        return eqx.tree_at(
            lambda s: (s.step_size, s.low, s.high, s.trials, s.first, s.action, s.valid, s.gamma),
            state,
            (
                pick(1.0, state.step_size),
                pick(0.0, state.low),
                pick(jnp.inf, state.high),
                pick(0, state.trials),
                pick(True, state.first),
                pick(jnp.inf, state.action),
                state.valid if self.carry else pick(False, state.valid),
                state.gamma if self.carry else pick(1.0, state.gamma),
            ),
        )

    def step(self, fn, y, rf, beta, loop_step, state: CompactLBFGSState, shared: Schedule):
        """One evaluation: the trial point y + αd (or y itself at a β's first step).

        `fn(y, rf) -> (action, (measurement error, model error))`. **Returns:**
        `(y, state, info)` with `y` the accepted point.
        """
        dtype = y.dtype
        m = self.history_length
        precond, bounds = shared.preconditioner, shared.bounds
        first = state.first
        trial = jnp.where(first, y, y + state.step_size * state.direction)
        if bounds is not None:
            unprojected = trial
            trial = jnp.clip(trial, *bounds)
        if self.carry:
            (f, errors), grad, grad_meas = _value_and_grads(fn, trial, rf)
        else:
            (f, errors), grad = jax.value_and_grad(fn, has_aux=True)(trial, rf)
            grad_meas = state.grad_meas
        finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(grad))
        if bounds is None:
            armijo = finite & (f <= state.action + self.armijo * state.step_size * state.slope)
            steep = jnp.dot(grad, state.direction) < self.curvature * state.slope
        else:
            # Along the projected path: the decrease that the gradient predicts for the
            # step taken, which must be a descent; no curvature condition where the box cut
            # the step (the path bends there).
            linear = jnp.dot(state.grad, trial - y)
            armijo = finite & (linear < 0) & (f <= state.action + self.armijo * linear)
            steep = jnp.all(trial == unprojected) & (
                jnp.dot(grad, state.direction) < self.curvature * state.slope
            )
        accept = first | (armijo & ~steep)

        # The new pair, if any, goes to the slot of this loop step, in the preconditioned
        # variables z = Lᵀx: s_z = Lᵀs, y_z = L⁻¹y (the change of L⁻¹g).
        s = trial - y
        yv = grad - state.grad
        if bounds is not None:
            # The active set at the trial point (the new point if it is accepted): its
            # entries are left out of the gradient that makes the direction and of the
            # pair's gradient change, so that the pairs are secant pairs of the action on
            # the free entries (the pairs of the reduced problem).
            active = projected_gradient(trial, grad, *bounds) != grad
            yv = jnp.where(active, 0, yv)
        pair = ~first & accept & (jnp.dot(s, yv) > 0)
        slot = loop_step % m
        valid = state.valid.at[slot].set(pair)
        if bounds is not None:
            g_free = jnp.where(active, 0, grad)
            if precond is None:
                g_z, s_z, y_z = g_free, s, yv
            else:
                g_z, s_z = precond.gradient(beta, g_free), precond.step(beta, s)
                y_z = precond.gradient(beta, yv)
        elif precond is None:
            g_z, s_z = grad, s
            y_z = g_z - state.grad_z
        else:
            g_z, s_z = precond.gradient(beta, grad), precond.step(beta, s)
            y_z = g_z - state.grad_z
        mem = self.memory_dtype
        if self.carry:
            # The pairs of earlier β's are rebuilt as y = y_m + (R_f now / R_f then)·y_f,
            # with the whole Gram matrix each step, in x (this option is for measuring
            # evaluations, not for speed): no preconditioner.
            factor = shared.factors[beta]
            s_mem = state.s_mem.at[slot].set(jnp.where(pair, s, 0).astype(mem))
            y_mem = state.y_mem.at[slot].set(jnp.where(pair, yv, 0).astype(mem))
            ym_row = jnp.where(pair, grad_meas - state.grad_meas, 0)
            if bounds is not None:
                ym_row = jnp.where(active, 0, ym_row)
            ym_mem = state.ym_mem.at[slot].set(ym_row.astype(mem))
            made_at = state.made_at.at[slot].set(factor)
            rho = (factor / made_at).astype(mem)
            s_dir = s_mem
            y_dir = ym_mem + rho[:, None] * (y_mem - ym_mem)
            sy = (s_dir @ y_dir.T).astype(dtype)
            yy = (y_dir @ y_dir.T).astype(dtype)
            products = None
        else:
            s_row = jnp.where(pair, s_z, 0).astype(mem)
            y_row = jnp.where(pair, y_z, 0).astype(mem)
            s_mem = state.s_mem.at[slot].set(s_row)
            y_mem = state.y_mem.at[slot].set(y_row)
            ym_mem, made_at = state.ym_mem, state.made_at
            # One pass over each memory: s_iᵀg, s_iᵀy and y_iᵀg, y_iᵀs, y_iᵀy (BNS §4).
            # The vectors as rows (k, n), contracted with the memories' rows: on a CPU under
            # vmap this runs in 20 µs per lane against 36 µs with columns (n, k).
            g_row = g_z.astype(mem)
            s_p = jnp.einsum("mn,kn->mk", s_mem, jnp.stack([g_row, y_row])).astype(dtype)
            y_p = jnp.einsum("mn,kn->mk", y_mem, jnp.stack([g_row, s_row, y_row])).astype(dtype)
            sy = state.sy.at[slot, :].set(y_p[:, 1]).at[:, slot].set(s_p[:, 1])
            yy = state.yy.at[slot, :].set(y_p[:, 2]).at[:, slot].set(y_p[:, 2])
            s_dir, y_dir = s_mem, y_mem
            products = (s_p[:, 0], y_p[:, 0])
        gamma = jnp.where(pair, sy[slot, slot] / yy[slot, slot], state.gamma)
        if precond is None:
            # No curvature yet: a first step of unit length, as scipy's.
            unit = 1 / jnp.maximum(jnp.linalg.norm(g_z), jnp.finfo(dtype).tiny)
            gamma = jnp.where(first & ~jnp.any(valid), unit, gamma)
        direction_z = compact_direction(g_z, s_dir, y_dir, sy, yy, valid, slot, gamma, products)
        # Rounding (float32 memories) can spoil descent: fall back to −γM⁻¹g.
        fallback = ~(jnp.dot(g_z, direction_z) < 0)
        direction_z = jnp.where(fallback, -gamma * g_z, direction_z)
        valid = jnp.where(fallback & accept, False, valid)
        direction = direction_z if precond is None else precond.direction(beta, direction_z)
        if bounds is not None:
            # Zero on the active set and where it would leave the box at once: what
            # remains only lowers gᵀd (the terms dropped are ≥ 0).
            lower, upper = bounds
            out = ((trial <= lower) & (direction < 0)) | ((trial >= upper) & (direction > 0))
            direction = jnp.where(active | out, 0, direction)
        slope = jnp.dot(grad, direction)

        # The line search's next trial, if this one was rejected.
        alpha, low, high = state.step_size, state.low, state.high
        high_new = jnp.where(armijo, high, alpha)
        low_new = jnp.where(armijo, alpha, low)
        curvature = f - state.action - alpha * state.slope
        quadratic = -state.slope * alpha**2 / (2 * jnp.maximum(curvature, jnp.finfo(dtype).tiny))
        shrink = jnp.where(
            finite & (low == 0), jnp.clip(quadratic, 0.1 * alpha, 0.5 * alpha), 0.5 * (low + alpha)
        )
        grow = jnp.where(jnp.isinf(high_new), 4 * alpha, 0.5 * (low_new + high_new))
        trials = jnp.where(accept, 0, state.trials + 1)

        def keep(new, old):
            return jnp.where(accept, new, old)

        action = keep(f, state.action)
        full = keep(grad, state.grad)
        reported = full if bounds is None else projected_gradient(keep(trial, y), full, *bounds)
        info = StepInfo(
            accepted=accept,
            first=first,
            action=action,
            grad=reported,
            errors=jax.tree.map(keep, errors, state.errors),
            # After an accepted step, the decrease the model expects along the new
            # direction; once the line search has failed, along the one it failed on.
            predicted_decrease=jnp.where(
                accept,
                -0.5 * slope,
                jnp.where(trials >= self.max_trials, -0.5 * state.slope, jnp.inf),
            ),
            failed=trials >= self.max_trials,
        )
        new = CompactLBFGSState(
            direction=keep(direction, state.direction),
            slope=keep(slope, state.slope),
            step_size=jnp.where(accept, 1.0, jnp.where(armijo, grow, shrink)).astype(dtype),
            low=jnp.where(accept, 0.0, low_new).astype(dtype),
            high=jnp.where(accept, jnp.inf, high_new).astype(dtype),
            trials=trials,
            first=first & ~accept,
            action=info.action,
            grad=full,
            grad_z=keep(g_z, state.grad_z),
            errors=info.errors,
            s_mem=s_mem,
            y_mem=y_mem,
            sy=sy,
            yy=yy,
            valid=valid,
            gamma=gamma,
            ym_mem=ym_mem,
            made_at=made_at,
            grad_meas=keep(grad_meas, state.grad_meas) if self.carry else grad_meas,
        )
        return keep(trial, y), new, info


def _value_and_grads(fn, y, rf):
    """The action, its errors, its gradient and its measurement term's gradient, from one
    forward pass and one reverse pass with two cotangents."""

    def parts(y):
        f, errors = fn(y, rf)
        return jnp.stack([f, errors[0]]), errors

    out, vjp, errors = jax.vjp(parts, y, has_aux=True)
    (grads,) = jax.vmap(vjp)(jnp.eye(2, dtype=out.dtype))
    return (out[0], errors), grads[0], grads[1]


def gauss_newton_tridiagonal(problem, unknowns, rf0):
    """The per-component tridiagonal part of JᵀJ of a banded problem, in its banded layout:
    the measurement residuals' diagonal (N, d), the model residuals' (at R_f = `rf0`)
    diagonal (N, d) and time-neighbour couplings (N − 1, d), and the parameters' diagonals
    (p,) of each.

    Exact, from 2d + p Jacobian-vector products: the states of even and of odd times never
    share a residual row, so one product per (parity, component) finds all their columns.
    """
    states, params = problem.to_banded(unknowns)
    n, d, p = problem.banded_shape
    dtype = states.dtype
    colour = (jnp.arange(n) % 2)[:, None] * d + jnp.arange(d)[None, :]  # (n, d)
    probes_s = (colour[None] == jnp.arange(2 * d + p)[:, None, None]).astype(dtype)
    probes_p = jnp.eye(2 * d + p, p, k=-2 * d, dtype=dtype)

    def columns(ps, pp):
        _, out = jax.jvp(
            lambda s, q: problem.banded_residuals(s, q, rf0), (states, params), (ps, pp)
        )
        return out

    node, interval = jax.vmap(columns)(probes_s, probes_p)  # (2d + p, n, q), (·, n − 1, k)
    times = jnp.arange(n)[:, None]
    meas = jnp.sum(node[colour, times] ** 2, axis=-1)
    this = interval[colour[:-1], times[:-1]]  # (n − 1, d, k): ∂r_t/∂x_t(a)
    nxt = interval[colour[1:], times[:-1]]  # ∂r_t/∂x_{t+1}(a)
    model = jnp.zeros((n, d), dtype).at[:-1].add(jnp.sum(this**2, -1))
    model = model.at[1:].add(jnp.sum(nxt**2, -1))
    model_off = jnp.sum(this * nxt, axis=-1)
    meas_p = jnp.sum(node[2 * d :] ** 2, axis=(1, 2))
    model_p = jnp.sum(interval[2 * d :] ** 2, axis=(1, 2))
    return meas, model, model_off, meas_p, model_p
