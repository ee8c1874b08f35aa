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
z = D^{1/2}x, with D the Gauss–Newton diagonal of the action at the β: the measurement
term's plus R_f times the model term's (`gauss_newton_diagonals`). The action's curvature
spans the R_m and R_f scales, up to 10⁹ apart across β; in z it is near one, and the
first step of each β, −D⁻¹g, is near a Newton step. Without banded residuals D = I and the
first step is −g/‖g‖, as scipy's L-BFGS-B takes.

Line search. One trial point per loop step (one evaluation): a weak-Wolfe bracketing
search (Armijo's decrease, c₁ = 1e-4, and the curvature condition gᵀd ≥ c₂ g₀ᵀd, c₂ = 0.9),
halving (or interpolating) when the decrease fails and doubling when the slope is still
steep, as in Lewis & Overton (2013). An accepted pair then always has sᵀy > 0.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree


def _triangular_solve(r: Float[Array, "m m"], b: Float[Array, " m"], *, transpose: bool):
    """Solve R u = b (or Rᵀu = b) for upper-triangular R by substitution (no LAPACK: see
    `_linalg.py`; these systems are m × m)."""
    m = r.shape[0]
    a = r.T if transpose else r
    order = range(m) if transpose else range(m - 1, -1, -1)
    u = jnp.zeros_like(b)
    for i in order:
        u = u.at[i].set((b[i] - jnp.dot(a[i], u)) / a[i, i])
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
    w = _triangular_solve(r, middle @ u - gamma * b, transpose=True)
    w_s = jnp.zeros((m,), dtype).at[order].set(w).astype(s_mem.dtype)
    w_y = jnp.zeros((m,), dtype).at[order].set(-gamma * u).astype(s_mem.dtype)
    return -(gamma * g + (w_s @ s_mem + w_y @ y_mem).astype(dtype))


class StepInfo(eqx.Module):
    """What one step of a minimiser tells the annealing loop, for one lane.

    - `accepted`: the evaluated point was accepted (it is now the lane's point).
    - `first`: the step evaluated the first point of a β (accepted unless non-finite).
    - `action`, `grad`: the action and its gradient at the accepted point.
    - `errors`: (measurement error, model error) at the accepted point.
    - `predicted_decrease`: the decrease the minimiser's local model still expects at the
      accepted point (½ gᵀHg for L-BFGS), or the last decrease where it has no model.
    - `failed`: the line search or trust region can make no more progress.
    """

    accepted: Bool[Array, ""]
    first: Bool[Array, ""]
    action: Float[Array, ""]
    grad: Float[Array, " n"]
    errors: PyTree[Array]
    predicted_decrease: Float[Array, ""]
    failed: Bool[Array, ""]


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
    errors: PyTree[Array]
    s_mem: Float[Array, "m n"]
    y_mem: Float[Array, "m n"]
    sy: Float[Array, "m m"]
    yy: Float[Array, "m m"]
    valid: Bool[Array, " m"]
    gamma: Float[Array, ""]
    scale: Float[Array, " n"]  # D^{-1/2}
    # The Gauss–Newton diagonals of the two terms (preconditioned runs; else empty).
    meas_curvature: Float[Array, " n"]
    model_curvature: Float[Array, " n"]
    # Carried curvature: the measurement part of each y, and the schedule's R_f factor at
    # which each pair was made (carry runs; else empty).
    ym_mem: Float[Array, "m n"]
    made_at: Float[Array, " m"]
    grad_meas: Float[Array, " n"]


class CompactLBFGS(eqx.Module):
    """The solver of one lane; `deepest.LBFGS` holds its settings."""

    history_length: int = eqx.field(static=True)
    memory_dtype: jnp.dtype = eqx.field(static=True)
    precondition: bool = eqx.field(static=True)
    carry: bool = eqx.field(static=True)
    armijo: float = eqx.field(static=True, default=1e-4)
    curvature: float = eqx.field(static=True, default=0.9)
    max_trials: int = eqx.field(static=True, default=20)

    def _scale(self, state_or_curv, factor, dtype):
        meas, model = state_or_curv
        diag = 2 * (meas + factor * model)
        floor = jnp.finfo(dtype).eps * jnp.max(diag)
        return jax.lax.rsqrt(jnp.maximum(diag, floor) + jnp.finfo(dtype).tiny)

    def init(self, y, f_struct, errors_struct, curvature=None):
        """The state of a lane at the first point of β = 0. `curvature` is the pair of
        Gauss–Newton diagonals (measurement, model at R_f = rf0) when preconditioning."""
        dtype = y.dtype
        m, n = self.history_length, y.shape[0]
        mem = self.memory_dtype
        empty = jnp.zeros((0,), dtype)
        if self.precondition:
            meas_c, model_c = curvature
            scale = self._scale((meas_c, model_c), 1.0, dtype)
        else:
            meas_c = model_c = empty
            scale = jnp.ones((n,), dtype)
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
            errors=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), errors_struct),
            s_mem=jnp.zeros((m, n), mem),
            y_mem=jnp.zeros((m, n), mem),
            sy=jnp.zeros((m, m), dtype),
            yy=jnp.zeros((m, m), dtype),
            valid=jnp.zeros((m,), bool),
            gamma=jnp.ones((), dtype),
            scale=scale,
            meas_curvature=meas_c,
            model_curvature=model_c,
            ym_mem=jnp.zeros((m, n) if self.carry else (0,), mem),
            made_at=jnp.ones((m,) if self.carry else (0,), dtype),
            grad_meas=jnp.zeros((n,) if self.carry else (0,), dtype),
        )

    def restart(self, done, state: CompactLBFGSState, factor) -> CompactLBFGSState:
        """Where `done`, start the next β (its R_f = `factor` × rf0). Only small leaves and
        the scale vector change: the memories stay, masked by `valid` (or, carrying
        curvature, rebuilt from their two parts at the next step)."""

        def pick(new, old):
            return jnp.where(done, new, old)

        dtype = state.action.dtype
        scale = state.scale
        if self.precondition:
            scale = pick(
                self._scale((state.meas_curvature, state.model_curvature), factor, dtype), scale
            )
        return eqx.tree_at(
            lambda s: (
                s.step_size,
                s.low,
                s.high,
                s.trials,
                s.first,
                s.action,
                s.valid,
                s.gamma,
                s.scale,
            ),
            state,
            (
                pick(1.0, state.step_size).astype(dtype),
                pick(0.0, state.low).astype(dtype),
                pick(jnp.inf, state.high).astype(dtype),
                pick(0, state.trials),
                pick(True, state.first),
                pick(jnp.inf, state.action).astype(dtype),
                state.valid if self.carry else pick(False, state.valid),
                state.gamma if self.carry else pick(1.0, state.gamma).astype(dtype),
                scale,
            ),
        )

    def step(self, fn, y, rf, factor, loop_step, state: CompactLBFGSState):
        """One evaluation: the trial point y + αd (or y itself at a β's first step).

        `fn(y, rf) -> (action, (measurement error, model error))`; `factor` is the
        schedule's R_f over rf0 at this β. **Returns:** `(y, state, info)` with `y` the
        accepted point.
        """
        dtype = y.dtype
        m = self.history_length
        first = state.first
        trial = jnp.where(first, y, y + state.step_size * state.direction)
        if self.carry:
            (f, errors), grad, grad_meas = _value_and_grads(fn, trial, rf)
        else:
            (f, errors), grad = jax.value_and_grad(fn, has_aux=True)(trial, rf)
            grad_meas = state.grad_meas
        finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(grad))
        armijo = finite & (f <= state.action + self.armijo * state.step_size * state.slope)
        steep = jnp.dot(grad, state.direction) < self.curvature * state.slope
        accept = first | (armijo & ~steep)

        # The new pair, if any, goes to the slot of this loop step.
        scale = state.scale
        s = trial - y
        yv = grad - state.grad
        pair = ~first & accept & (jnp.dot(s, yv) > 0)
        slot = loop_step % m
        valid = state.valid.at[slot].set(pair)
        g_t = grad * scale
        mem = self.memory_dtype
        if self.carry:
            # Untransformed rows: the scale D^{-1/2} changes with β. The pairs of earlier
            # β's are rebuilt as y = y_m + (R_f now / R_f then)·y_f, with the whole Gram
            # matrix each step (this option is for measuring evaluations, not for speed).
            s_mem = state.s_mem.at[slot].set(jnp.where(pair, s, 0).astype(mem))
            y_mem = state.y_mem.at[slot].set(jnp.where(pair, yv, 0).astype(mem))
            ym_row = jnp.where(pair, grad_meas - state.grad_meas, 0)
            ym_mem = state.ym_mem.at[slot].set(ym_row.astype(mem))
            made_at = state.made_at.at[slot].set(factor)
            rho = (factor / made_at).astype(mem)
            s_dir = s_mem / scale.astype(mem)
            y_dir = (ym_mem + rho[:, None] * (y_mem - ym_mem)) * scale.astype(mem)
            sy = (s_dir @ y_dir.T).astype(dtype)
            yy = (y_dir @ y_dir.T).astype(dtype)
            products = None
        else:
            # Rows in the preconditioned variables z = D^{1/2}x.
            s_row = jnp.where(pair, s / scale, 0).astype(mem)
            y_row = jnp.where(pair, yv * scale, 0).astype(mem)
            s_mem = state.s_mem.at[slot].set(s_row)
            y_mem = state.y_mem.at[slot].set(y_row)
            ym_mem, made_at = state.ym_mem, state.made_at
            # One pass over each memory: s_iᵀg, s_iᵀy and y_iᵀg, y_iᵀs, y_iᵀy (BNS §4).
            g_row = g_t.astype(mem)
            s_p = (s_mem @ jnp.stack([g_row, y_row], axis=1)).astype(dtype)
            y_p = (y_mem @ jnp.stack([g_row, s_row, y_row], axis=1)).astype(dtype)
            sy = state.sy.at[slot, :].set(y_p[:, 1]).at[:, slot].set(s_p[:, 1])
            yy = state.yy.at[slot, :].set(y_p[:, 2]).at[:, slot].set(y_p[:, 2])
            s_dir, y_dir = s_mem, y_mem
            products = (s_p[:, 0], y_p[:, 0])
        gamma = jnp.where(pair, sy[slot, slot] / yy[slot, slot], state.gamma)
        if not self.precondition:
            # No curvature yet: a first step of unit length, as scipy's.
            unit = 1 / jnp.maximum(jnp.linalg.norm(grad), jnp.finfo(dtype).tiny)
            gamma = jnp.where(first & ~jnp.any(valid), unit, gamma)
        direction = scale * compact_direction(
            g_t, s_dir, y_dir, sy, yy, valid, slot, gamma, products
        )
        slope = jnp.dot(grad, direction)
        # Rounding (float32 memories) can spoil descent: fall back to −γD⁻¹g.
        fallback = ~(slope < 0)
        direction = jnp.where(fallback, -gamma * scale**2 * grad, direction)
        slope = jnp.where(fallback, jnp.dot(grad, direction), slope)
        valid = jnp.where(fallback & accept, False, valid)

        # The line search's next trial, if this one was rejected.
        alpha, low, high = state.step_size, state.low, state.high
        high_new = jnp.where(armijo, high, alpha)
        low_new = jnp.where(armijo, alpha, low)
        curvature = f - state.action - alpha * state.slope
        quadratic = -state.slope * alpha**2 / (2 * jnp.maximum(curvature, jnp.finfo(dtype).tiny))
        shrink = jnp.where(
            finite & (low == 0), jnp.clip(quadratic, 0.1 * alpha, 0.5 * alpha), 0.5 * (low + alpha)
        )
        grow = jnp.where(jnp.isinf(high_new), 2 * alpha, 0.5 * (low_new + high_new))
        trials = jnp.where(accept, 0, state.trials + 1)

        info = StepInfo(
            accepted=accept,
            first=first,
            action=jnp.where(accept, f, state.action),
            grad=jnp.where(accept, grad, state.grad),
            errors=jax.tree.map(lambda a, b: jnp.where(accept, a, b), errors, state.errors),
            predicted_decrease=jnp.where(accept, -0.5 * slope, jnp.inf),
            failed=trials >= self.max_trials,
        )
        new = CompactLBFGSState(
            direction=jnp.where(accept, direction, state.direction),
            slope=jnp.where(accept, slope, state.slope),
            step_size=jnp.where(accept, 1.0, jnp.where(armijo, grow, shrink)).astype(dtype),
            low=jnp.where(accept, 0.0, low_new).astype(dtype),
            high=jnp.where(accept, jnp.inf, high_new).astype(dtype),
            trials=trials,
            first=first & ~accept,
            action=info.action,
            grad=info.grad,
            errors=info.errors,
            s_mem=s_mem,
            y_mem=y_mem,
            sy=sy,
            yy=yy,
            valid=valid,
            gamma=gamma,
            scale=scale,
            meas_curvature=state.meas_curvature,
            model_curvature=state.model_curvature,
            ym_mem=ym_mem,
            made_at=made_at,
            grad_meas=jnp.where(accept, grad_meas, state.grad_meas) if self.carry else grad_meas,
        )
        return jnp.where(accept, trial, y), new, info


def _value_and_grads(fn, y, rf):
    """The action, its errors, its gradient and its measurement term's gradient, from one
    forward pass and one reverse pass with two cotangents."""

    def parts(y):
        f, errors = fn(y, rf)
        return jnp.stack([f, errors[0]]), errors

    out, vjp, errors = jax.vjp(parts, y, has_aux=True)
    (grads,) = jax.vmap(vjp)(jnp.eye(2, dtype=out.dtype))
    return (out[0], errors), grads[0], grads[1]


def gauss_newton_diagonals(problem, unknowns, rf0):
    """The diagonals of JᵀJ of a banded problem's measurement residuals and of its model
    residuals at R_f = `rf0`, as pytrees like `unknowns`.

    Exact, from 2d + p Jacobian-vector products: the states of even and of odd times never
    share a residual row, so one product per (parity, component) finds all their columns.
    """
    states, params = problem.to_banded(unknowns)
    n, d, p = problem.banded_shape
    dtype = states.dtype
    colour = (jnp.arange(n) % 2)[:, None] * d + jnp.arange(d)  # (n, d)
    probes_s = (colour[None] == jnp.arange(2 * d + p)[:, None, None]).astype(dtype)
    probes_p = jnp.eye(2 * d + p, p, k=-2 * d, dtype=dtype)

    def columns(ps, pp):
        _, (node, interval) = jax.jvp(
            lambda s, q: problem.banded_residuals(s, q, rf0), (states, params), (ps, pp)
        )
        return jnp.sum(node**2, axis=-1), jnp.sum(interval**2, axis=-1)

    node_sq, interval_sq = jax.vmap(columns)(probes_s, probes_p)  # (2d + p, n), (·, n − 1)
    times = jnp.arange(n)
    meas_s = node_sq[colour, times[:, None]]
    before = jnp.where(times[:, None] > 0, interval_sq[colour, (times - 1)[:, None]], 0)
    after = jnp.where(
        times[:, None] < n - 1, interval_sq[colour, jnp.minimum(times, n - 2)[:, None]], 0
    )
    model_s = before + after
    meas_p = jnp.sum(node_sq[2 * d :], axis=1)
    model_p = jnp.sum(interval_sq[2 * d :], axis=1)
    return problem.from_banded(meas_s, meas_p), problem.from_banded(model_s, model_p)
