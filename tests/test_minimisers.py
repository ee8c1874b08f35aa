"""The minimisers of each β: banded residuals, the block-tridiagonal solve, and
Levenberg–Marquardt against L-BFGS."""

import functools

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import deepest
import deepest.annealing
from deepest.minimisers import (
    CompactLBFGS,
    Schedule,
    TridiagonalPreconditioner,
    banded_normal_equations,
    compact_direction,
    solve_by_elimination,
)

from .helpers import small_problem

CASES = [
    ("euler", 1, False),
    ("trapezoid", 2, True),
    ("rk4", 1, True),
    ("simpson_hermite", 2, False),
]


@functools.cache
def _data():
    problem = small_problem(n_times=9, dim=6)
    return problem.data


def _problem(discretisation, steps_per_obs, masked):
    data = _data()
    rm = 1 / 0.4**2
    if masked:
        mask = np.ones(data.values.shape, bool)
        mask[3, 1] = mask[7, 0] = False
        data = deepest.Observations(
            data.times, data.values, data.observed, truth=data.truth, mask=mask, noise=data.noise
        )
        rm = np.linspace(5.0, 7.0, len(data.observed))
    return deepest.Assimilation(
        deepest.models.Lorenz96(8.0),
        data,
        rm=rm,
        discretisation=discretisation,
        steps_per_obs=steps_per_obs,
        estimate=("forcing",),
    )


@pytest.mark.parametrize("discretisation, steps_per_obs, masked", CASES)
def test_banded_residuals_sum_to_the_action(discretisation, steps_per_obs, masked):
    problem = _problem(discretisation, steps_per_obs, masked)
    u = problem.init(jr.key(3))
    states, params = problem.to_banded(u)
    assert (states.shape[0], states.shape[1], params.shape[0]) == problem.banded_shape
    back = problem.from_banded(states, params)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), back, u))
    for rf in (2.5, jnp.linspace(1.0, 3.0, problem.dim)):
        node, interval = eqx.filter_jit(problem.banded_residuals)(states, params, rf)
        total = jnp.sum(node**2) + jnp.sum(interval**2)
        action = eqx.filter_jit(problem.action)(u, rf)
        assert float(total) == pytest.approx(float(action), rel=1e-13)


@pytest.mark.parametrize("discretisation, steps_per_obs, masked", CASES)
def test_banded_residuals_are_local_in_time(discretisation, steps_per_obs, masked):
    problem = _problem(discretisation, steps_per_obs, masked)
    states, params = problem.to_banded(problem.init(jr.key(4)))
    n, d, _ = problem.banded_shape
    jacobian = jax.jit(lambda s, p: jax.jacfwd(problem.banded_residuals)(s, p, 1.0))
    node_jac, interval_jac = jacobian(states, params)
    # node row i may depend on states[i] only; interval row i on states[i], states[i + 1]
    touched = np.abs(np.asarray(node_jac)).sum(axis=(1, 3)) > 0  # (rows, times)
    assert not np.any(touched & ~np.eye(n, dtype=bool))
    touched = np.abs(np.asarray(interval_jac)).sum(axis=(1, 3)) > 0
    allowed = np.eye(n - 1, n, dtype=bool) | np.eye(n - 1, n, k=1, dtype=bool)
    assert not np.any(touched & ~allowed)
    assert touched[allowed].all()


@pytest.mark.parametrize("one_lane", [False, True])
@pytest.mark.parametrize("discretisation, steps_per_obs, masked", CASES)
def test_normal_blocks_match_the_dense_jacobian(discretisation, steps_per_obs, masked, one_lane):
    problem = _problem(discretisation, steps_per_obs, masked)
    minimiser = deepest.LevenbergMarquardt()
    y = minimiser.flatten(problem, problem.init(jr.key(5)))
    _, fn = minimiser.solver_and_fn(problem)
    n, d, p = problem.banded_shape

    def residual(y):
        node, interval = fn(y, 3.0)[0]
        return jnp.concatenate([node.ravel(), interval.ravel()])

    @jax.jit
    def normal(y):
        residuals, linear = jax.linearize(lambda y: fn(y, 3.0)[0], y)

        class Jacobian:
            mv = staticmethod(linear)

        return banded_normal_equations(Jacobian, residuals, n, d, p, y.dtype, one_lane)

    blocks = normal(y)
    jac = jax.jit(jax.jacfwd(residual))(y)
    dense = np.asarray(jac.T @ jac)
    grad = np.asarray(jac.T @ residual(y))
    scale = np.abs(dense).max()
    for i in range(n):
        rows = slice(i * d, (i + 1) * d)
        np.testing.assert_allclose(blocks.diagonal[i], dense[rows, rows], atol=1e-13 * scale)
        np.testing.assert_allclose(blocks.border[i], dense[rows, n * d :], atol=1e-13 * scale)
        if i < n - 1:
            nxt = slice((i + 1) * d, (i + 2) * d)
            np.testing.assert_allclose(blocks.off[i], dense[rows, nxt], atol=1e-13 * scale)
    np.testing.assert_allclose(blocks.corner, dense[n * d :, n * d :], atol=1e-13 * scale)
    np.testing.assert_allclose(blocks.grad, grad, atol=1e-13 * np.abs(grad).max())


@pytest.mark.parametrize("n_params", [0, 2])
def test_block_tridiagonal_solve_matches_dense(getkey, n_params):
    n, d, p = 7, 3, n_params
    jac = jr.normal(getkey(), (4 * n * d, n * d + p))
    # keep only the bordered block-tridiagonal pattern of JᵀJ, then make it SPD
    full = np.asarray(jac.T @ jac)
    pattern = np.zeros_like(full, bool)
    for i in range(n):
        for j in range(max(0, i - 1), min(n, i + 2)):
            pattern[i * d : (i + 1) * d, j * d : (j + 1) * d] = True
    pattern[n * d :, :] = pattern[:, n * d :] = True
    matrix = np.where(pattern, full, 0) + n * d * np.eye(n * d + p)
    rhs = np.asarray(jr.normal(getkey(), (n * d + p,)))
    blocks = [matrix[i * d : (i + 1) * d] for i in range(n)]
    diagonal = np.stack([b[:, i * d : (i + 1) * d] for i, b in enumerate(blocks)])
    off = np.stack([blocks[i][:, (i + 1) * d : (i + 2) * d] for i in range(n - 1)])
    border = np.stack([b[:, n * d :] for b in blocks])
    x, theta = deepest.solve_block_tridiagonal(
        diagonal, off, border, matrix[n * d :, n * d :], rhs[: n * d].reshape(n, d), rhs[n * d :]
    )
    expected = np.linalg.solve(matrix, rhs)
    np.testing.assert_allclose(np.concatenate([np.ravel(x), theta]), expected, rtol=1e-12)


def test_levenberg_marquardt_reaches_the_lbfgs_minima_in_fewer_steps():
    problem = _problem("trapezoid", 1, False)
    schedule = deepest.AnnealSchedule(1e-2, 2.0, 12)
    runs = {
        name: deepest.anneal(problem, schedule, 4, jr.key(0), minimiser=m, progress=False)
        for name, m in (("lbfgs", deepest.LBFGS()), ("lm", deepest.LevenbergMarquardt()))
    }
    lbfgs, lm = runs["lbfgs"], runs["lm"]
    assert lm.converged.all() and lbfgs.converged.all()
    # The same minima at every β: the stopping rule is relative to the action, so the
    # small actions of low β are minimised as well as the large ones.
    np.testing.assert_allclose(lm.action, lbfgs.action, rtol=1e-6)
    # Nine observation times pin the forcing weakly: L-BFGS's own paths stop 1.5e-3
    # apart along that flat direction, LM's agree with each other to 1e-8.
    np.testing.assert_allclose(lm.params["forcing"], lbfgs.params["forcing"], atol=5e-3)
    assert np.ptp(lm.params["forcing"]) < 1e-8
    assert lm.iterations.sum() * 2 < lbfgs.iterations.sum()
    # At LM's final points the action is stationary. LM stops on a decrease ≤ 1e-10·|A|
    # (|A| ≈ 0.37), which leaves max|∇A| ≈ 1e-7 (measured); 1e-5 leaves ×100. A level
    # stopped short is not stationary: 3 evaluations a β leave 2e-4, a random start 26.
    rf = float(schedule.rf[-1])
    grads = jax.vmap(jax.grad(lambda u: problem.action(u, rf)))(lm.unknowns)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) < 1e-5


def _rosenbrock(y, rf):
    value = jnp.sum(100 * (y[1:] - y[:-1] ** 2) ** 2 + (1 - y[:-1]) ** 2)
    return value, (value, value)


def _run_lanes(solver, fn, starts, n_steps, rf=None):
    """`n_steps` steps of `solver` from each start, as the annealing loop takes them (one
    shared memory slot per step), vmapped; and the StepInfo of every step."""
    errors_struct = jax.eval_shape(fn, starts[0], rf)[1]
    shared = Schedule(jnp.ones(1), None)

    def run(y0):
        def body(carry, i):
            y, state = carry
            y, state, info = solver.step(fn, y, rf, 0, i, state, shared)
            return (y, state), (y, info)

        state = solver.init(y0, jnp.zeros(()), errors_struct)
        return jax.lax.scan(body, (y0, state), jnp.arange(n_steps))

    return jax.jit(jax.vmap(run)), jax.jit(run)


def test_lbfgs_lanes_sharing_memory_slots_are_independent_and_reach_the_minimum():
    """Lanes write their L-BFGS pairs to the slot of the loop's step counter: each lane's
    path must be the one it takes alone, and reach the Rosenbrock minimum (all ones)."""
    solver = CompactLBFGS(5, jnp.dtype(jnp.float64), carry=False)
    starts = 1.0 + 0.5 * jr.normal(jr.key(0), (3, 6))
    batched, alone = _run_lanes(solver, _rosenbrock, starts, 120)
    (together, states), _ = batched(starts)
    for k in range(3):
        (y, state), _ = alone(starts[k])
        np.testing.assert_allclose(together[k], y, rtol=1e-13, atol=1e-13)
        np.testing.assert_array_equal(state.valid, states.valid[k])
    np.testing.assert_allclose(together, 1.0, atol=1e-8)
    assert np.all(np.abs(states.grad) < 1e-8)  # in 120 evaluations (gradient descent: ≫ 1e4)


def test_lbfgs_line_search_satisfies_the_wolfe_conditions():
    """Every accepted step s (after a β's first point) meets Armijo's decrease
    f₁ ≤ f₀ + c₁ g₀ᵀs and the curvature condition g₁ᵀs ≥ c₂ g₀ᵀs, so sᵀy > 0."""
    solver = CompactLBFGS(5, jnp.dtype(jnp.float64), carry=False)
    starts = 1.0 + 0.8 * jr.normal(jr.key(1), (4, 8))
    batched, _ = _run_lanes(solver, _rosenbrock, starts, 80)
    _, (ys, infos) = batched(starts)
    n_checked = n_trials = 0
    for lane in range(starts.shape[0]):
        steps = np.flatnonzero(np.asarray(infos.accepted[lane]))
        n_trials += 80 - len(steps)
        for prev, k in zip(steps[:-1], steps[1:]):
            s = np.asarray(ys[lane, k] - ys[lane, prev])
            f0, f1 = float(infos.action[lane, prev]), float(infos.action[lane, k])
            g0, g1 = np.asarray(infos.grad[lane, prev]), np.asarray(infos.grad[lane, k])
            if np.abs(s).max() == 0:
                continue
            assert f1 <= f0 + solver.armijo * (g0 @ s)
            assert g1 @ s >= solver.curvature * (g0 @ s)
            n_checked += 1
    assert n_checked > 150 and n_trials > 0  # the search did reject some trial points


def _replay(fn, points, history):
    """optax's L-BFGS directions −Hg at `points`, and the compact form's from the same
    pairs, written to slots as the annealing loop writes them."""
    lbfgs = optax.scale_by_lbfgs(history)

    @jax.jit
    def optax_update(g, state, x):
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 and int64 indices
            return lbfgs.update(g, state, x)

    @jax.jit
    def ours_update(g, s_mem, y_mem, valid, slot):
        sy, yy = s_mem @ y_mem.T, y_mem @ y_mem.T
        gamma = sy[slot, slot] / yy[slot, slot]
        return compact_direction(g, s_mem, y_mem, sy, yy, valid, slot, gamma)

    state = lbfgs.init(points[0])
    grad = jax.jit(jax.grad(fn))
    grads = [grad(x) for x in points]
    n, m = points.shape[1], history
    s_mem = jnp.zeros((m, n))
    y_mem = jnp.zeros((m, n))
    valid = jnp.zeros((m,), bool)
    ours, theirs = [], []
    for k, (x, g) in enumerate(zip(points, grads)):
        update, state = optax_update(g, state, x)
        if k == 0:
            continue
        slot = (k - 1) % m
        s_mem = s_mem.at[slot].set(x - points[k - 1])
        y_mem = y_mem.at[slot].set(g - grads[k - 1])
        valid = valid.at[slot].set(True)
        ours.append(ours_update(g, s_mem, y_mem, valid, jnp.asarray(slot)))
        theirs.append(-update)
    return np.asarray(ours), np.asarray(theirs)


@pytest.mark.parametrize("history", [3, 5])
def test_compact_lbfgs_directions_equal_optax_on_a_quadratic(getkey, history):
    n = 30
    a = jr.normal(getkey(), (n, n))
    hessian = a @ a.T / n + jnp.diag(jnp.linspace(0.1, 10.0, n))
    b = jr.normal(getkey(), (n,))

    def fn(x):
        return 0.5 * x @ hessian @ x - b @ x

    # iterates of gradient descent with exact line search: sᵀy > 0 for each pair
    x, points = jnp.zeros(n), []
    for _ in range(12):
        points.append(x)
        g = hessian @ x - b
        x = x - (g @ g) / (g @ hessian @ g) * g
    ours, theirs = _replay(fn, jnp.stack(points), history)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12 * np.abs(theirs).max())


def test_compact_lbfgs_directions_equal_optax_on_the_lorenz96_action():
    problem = _problem("trapezoid", 1, False)
    u0 = problem.init(jr.key(7))
    y0, unravel = jax.flatten_util.ravel_pytree(u0)

    def fn(y):
        return problem.action(unravel(y), 5.0)

    # iterates of optax's own L-BFGS with its zoom line search (Wolfe: sᵀy > 0)
    opt = optax.lbfgs(memory_size=5)
    value_and_grad = optax.value_and_grad_from_state(fn)

    @jax.jit
    def step(y, state):
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 and int64 indices
            value, grad = value_and_grad(y, state=state)
            updates, state = opt.update(grad, state, y, value=value, grad=grad, value_fn=fn)
        return optax.apply_updates(y, updates), state

    state, y, points = opt.init(y0), y0, []
    for _ in range(14):
        points.append(y)
        y, state = step(y, state)
    ours, theirs = _replay(fn, jnp.stack(points), 5)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12 * np.abs(theirs).max())


def test_minimiser_arguments_are_checked():
    problem = _problem("trapezoid", 1, False)
    schedule = deepest.AnnealSchedule(1e-2, 2.0, 2)
    with pytest.raises(TypeError, match="minimiser"):
        deepest.anneal(problem, schedule, 2, jr.key(0), minimiser="lbfgs")
    with pytest.raises(ValueError, match="damping"):
        deepest.LevenbergMarquardt(damping=0.0)
    with pytest.raises(ValueError, match="history_length"):
        deepest.LBFGS(history_length=0)
    xs = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    training = deepest.training(deepest.LayeredNetwork([3, 3, 3], key=jr.key(0)), xs, xs, rm=1.0)
    with pytest.raises(ValueError, match="banded residuals"):
        deepest.anneal(training, schedule, 2, jr.key(0), minimiser=deepest.LevenbergMarquardt())


def test_preconditioner_needs_a_banded_problem():
    xs = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    training = deepest.training(deepest.LayeredNetwork([3, 3, 3], key=jr.key(0)), xs, xs, rm=1.0)
    assert not isinstance(training, deepest.annealing.AbstractBandedProblem)
    assert isinstance(_problem("trapezoid", 1, False), deepest.annealing.AbstractBandedProblem)
    with pytest.raises(TypeError, match="AbstractBandedProblem"):
        TridiagonalPreconditioner.build(training, training.init(jr.key(0)), 1.0, jnp.ones(2))


class _Unbanded(deepest.AbstractProblem):
    """A banded problem that says it has no banded structure: minimisers ask the problem's
    protocol (`banded_shape`), not its class."""

    inner: deepest.Assimilation

    def init(self, key):
        return self.inner.init(key)

    def action(self, unknowns, rf):
        return self.inner.action(unknowns, rf)

    def measurement_error(self, unknowns):
        return self.inner.measurement_error(unknowns)

    def model_error(self, unknowns):
        return self.inner.model_error(unknowns)


def test_minimisers_ask_the_problem_for_its_banded_structure():
    banded = _problem("trapezoid", 1, False)
    plain = _Unbanded(banded)
    assert banded.banded_shape == banded.to_banded(banded.init(jr.key(0)))[0].shape + (1,)
    assert plain.banded_shape is None
    lm = deepest.LevenbergMarquardt()
    lm.check(banded)
    with pytest.raises(ValueError, match="banded residuals"):
        lm.check(plain)
    # L-BFGS preconditions (the banded layout) only where the problem offers the structure.
    lbfgs = deepest.LBFGS()
    y0 = jnp.stack([lbfgs.flatten(banded, banded.init(jr.key(0)))])
    factors = jnp.ones(2)
    shared = lbfgs.prepare(banded, y0, jnp.ones(2), factors)
    assert shared.preconditioner is not None
    y0 = jnp.stack([lbfgs.flatten(plain, plain.init(jr.key(0)))])
    assert lbfgs.prepare(plain, y0, jnp.ones(2), factors).preconditioner is None


def test_give_up_limits_are_fields():
    assert deepest.LBFGS().max_trials == 20
    assert deepest.LevenbergMarquardt().max_rejections == 30
    for make, name in (
        (lambda v: deepest.LBFGS(max_trials=v), "max_trials"),
        (lambda v: deepest.LevenbergMarquardt(max_rejections=v), "max_rejections"),
    ):
        for bad in (0, 1.5):
            with pytest.raises(ValueError, match=name):
                make(bad)
    # A line search allowed one trial gives up at once where a default one goes on.
    problem = _problem("trapezoid", 1, False)
    schedule = deepest.AnnealSchedule(1e-2, 2.0, 2)
    runs = {
        trials: deepest.anneal(
            problem,
            schedule,
            2,
            jr.key(0),
            progress=False,
            minimiser=deepest.LBFGS(max_trials=trials),
        )
        for trials in (1, 20)
    }
    assert runs[1].iterations.sum() < runs[20].iterations.sum()


def test_the_optax_lbfgs_switch_is_gone_with_a_pointer():
    with pytest.raises(ValueError, match="optax_lbfgs.py"):
        deepest.LBFGS(compact=False)
    with pytest.warns(DeprecationWarning, match="compact"):
        assert deepest.LBFGS(compact=True) == deepest.LBFGS()


def test_block_tridiagonal_solve_is_exact_under_vmap(getkey):
    # several lanes at once, blocks larger than the eliminations' unrolling is trivial for

    lanes, n, d, p = 3, 6, 8, 1
    size = n * d + p
    pattern = np.zeros((size, size), bool)
    for i in range(n):
        for j in range(max(0, i - 1), min(n, i + 2)):
            pattern[i * d : (i + 1) * d, j * d : (j + 1) * d] = True
    pattern[n * d :, :] = pattern[:, n * d :] = True
    matrices, rhss = [], []
    for _ in range(lanes):
        jac = np.asarray(jr.normal(getkey(), (2 * size, size)))
        matrices.append(np.where(pattern, jac.T @ jac, 0) + size * np.eye(size))
        rhss.append(np.asarray(jr.normal(getkey(), (size,))))
    matrices, rhss = np.stack(matrices), np.stack(rhss)
    rows = [matrices[:, i * d : (i + 1) * d] for i in range(n)]
    diagonal = np.stack([r[:, :, i * d : (i + 1) * d] for i, r in enumerate(rows)], axis=1)
    off = np.stack([rows[i][:, :, (i + 1) * d : (i + 2) * d] for i in range(n - 1)], axis=1)
    border = np.stack([r[:, :, n * d :] for r in rows], axis=1)
    x, theta = jax.jit(jax.vmap(deepest.solve_block_tridiagonal))(
        diagonal,
        off,
        border,
        matrices[:, n * d :, n * d :],
        rhss[:, : n * d].reshape(lanes, n, d),
        rhss[:, n * d :],
    )
    expected = np.linalg.solve(matrices, rhss[..., None])[..., 0]
    got = np.concatenate([np.asarray(x).reshape(lanes, -1), np.asarray(theta)], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    # the column-dropping Gauss–Jordan sweep: [A | B] → A⁻¹B
    a, b = matrices[0, :d, :d], matrices[0, :d, d : 3 * d + 1]
    np.testing.assert_allclose(
        solve_by_elimination(jnp.concatenate([a, b], axis=1), d),
        np.linalg.solve(a, b),
        rtol=1e-12,
        atol=1e-15,
    )
