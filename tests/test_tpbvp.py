"""Two-point boundary value problems: closed forms, scipy's solve_bvp, conservation, errors."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

import deepest


class Linear(deepest.models.AbstractModel):
    a: jax.Array

    def __call__(self, t, x):
        return self.a @ x


class Pendulum(deepest.models.AbstractModel):
    g: jax.Array
    damping: float = 0.1

    def __call__(self, t, x):
        return jnp.stack([x[1], -self.g * jnp.sin(x[0]) - self.damping * x[1]])


METHODS = {
    "multiple-shooting-tsit5": deepest.MultipleShooting(4, steps_per_segment=32),
    "multiple-shooting-gauss-legendre": deepest.MultipleShooting(
        4, deepest.integrators.SymplecticGaussLegendre(), steps_per_segment=32
    ),
    "shooting": deepest.Shooting(steps_per_interval=128),
    "collocation": deepest.Collocation(65),
}


@pytest.fixture(scope="module")
def solve():
    """One compiled solve per method (shared by the tests with equal problem structure)."""
    cache = {}

    def _solve(problem, name, **kwargs):
        key = (name, tuple(sorted(kwargs)))
        if key not in cache:
            cache[key] = eqx.filter_jit(lambda p, **kw: deepest.solve_tpbvp(p, METHODS[name], **kw))
        return cache[key](problem, **kwargs)

    return _solve


# -- linear problems against the matrix exponential ----------------------------------------

A = np.array([[-0.5, 1.0], [-1.0, -0.2]])
RM, RF = 10.0, 2.0
TIMES = np.array([0.0, 0.4, 1.0])
Y = np.array([[1.0, 0.5], [0.3, -0.1], [0.2, -0.3]])
MASK = np.array([[True, True], [True, False], [True, True]])


def _linear_closed_form():
    """z = (x, p) solves ż = M z, M = [[A, I/R_f], [0, −Aᵀ]], between measurements; p jumps
    by R_m Hᵀ(Hx − y) at the interior one and satisfies the end conditions. Everything is
    affine in x(0), so solve for it exactly."""
    d = A.shape[0]
    m = np.block([[A, np.eye(d) / RF], [np.zeros((d, d)), -A.T]])
    w = MASK.astype(float)

    def sweep(x0):
        z = np.concatenate([x0, RM * w[0] * (x0 - Y[0])])
        states = [z]
        for k in range(1, len(TIMES)):
            z = scipy.linalg.expm(m * (TIMES[k] - TIMES[k - 1])) @ z
            if k < len(TIMES) - 1:
                z = z + np.concatenate([np.zeros(d), RM * w[k] * (z[:d] - Y[k])])
            states.append(z)
        return z[d:] + RM * w[-1] * (z[:d] - Y[-1]), states

    base, _ = sweep(np.zeros(d))
    jac = np.stack([sweep(e)[0] - base for e in np.eye(d)], axis=1)
    x0 = np.linalg.solve(jac, -base)
    _, nodes = sweep(x0)

    def exact(t):
        k = min(np.searchsorted(TIMES, t, side="right") - 1, len(TIMES) - 2)
        return scipy.linalg.expm(m * (t - TIMES[k])) @ nodes[k]

    return exact


@pytest.mark.parametrize("name", list(METHODS))
def test_linear_problem_matches_matrix_exponential(name, solve):
    data = deepest.Observations(TIMES, Y, [0, 1], mask=MASK)
    problem = deepest.ContinuousAssimilation(Linear(jnp.asarray(A)), data, RM, RF)
    sol = solve(problem, name)
    assert sol.converged
    exact = _linear_closed_form()
    ts = np.linspace(0, 1, 41)
    want = np.stack([exact(t) for t in ts])
    x, p = jax.vmap(sol.evaluate)(jnp.asarray(ts))
    # Order-4/5 schemes at h = 1/128 (1/64 for collocation): discretisation error ≲ 1e-9;
    # dense output is cubic Hermite on the step grid, also ≲ 1e-9.
    assert np.max(np.abs(x - want[:, :2])) < 1e-8
    assert np.max(np.abs(p - want[:, 2:])) < 1e-8
    # The momentum jumps by R_m(x − y) at the interior measurement (component 0 only).
    x_mid, p_after = sol.evaluate(0.4)
    _, p_before = sol.evaluate(0.4 - 1e-9)
    jump = RM * (x_mid[0] - Y[1, 0])
    assert abs(p_after[0] - p_before[0] - jump) < 1e-6 * max(1.0, abs(jump))
    assert abs(p_after[1] - p_before[1]) < 1e-6


# -- nonlinear problems against scipy.integrate.solve_bvp ---------------------------------


def _pendulum_numpy(y, rf, g=4.0, c=0.1):
    x0, x1, p0, p1 = y
    f = np.stack([x1, -g * np.sin(x0) - c * x1])
    # ṗ = −Jᵀp with J = [[0, 1], [−g cos x0, −c]].
    dp = np.stack([g * np.cos(x0) * p1, -p0 + c * p1])
    return np.concatenate([f + np.stack([p0, p1]) / rf, dp])


def _lorenz_numpy(y, rf, s=10.0, r=28.0, b=8.0 / 3.0):
    x, p = y[:3], y[3:]
    f = np.stack([s * (x[1] - x[0]), x[0] * (r - x[2]) - x[1], x[0] * x[1] - b * x[2]])
    jt_p = np.stack(
        [
            -s * p[0] + (r - x[2]) * p[1] + x[1] * p[2],
            s * p[0] - p[1] + x[0] * p[2],
            -x[0] * p[1] - b * p[2],
        ]
    )
    return np.concatenate([f + p / rf, -jt_p])


NONLINEAR = {
    # (model, times, values, observed, rm, rf, numpy canonical equations)
    "pendulum": (
        Pendulum(jnp.asarray(4.0)),
        [0.0, 1.0],
        [[1.0, 0.0], [-0.5, 0.3]],
        [0, 1],
        10.0,
        1.0,
        _pendulum_numpy,
    ),
    "lorenz63-partial": (
        deepest.models.Lorenz63(),
        [0.0, 0.3],
        [[1.0, 20.0], [0.0, 22.0]],
        [0, 2],
        20.0,
        1.0,
        _lorenz_numpy,
    ),
}


@pytest.fixture(scope="module")
def scipy_solutions():
    out = {}
    for name, (_, times, values, observed, rm, rf, numpy_field) in NONLINEAR.items():
        d = 2 if name == "pendulum" else 3
        w = np.zeros((2, d))
        w[:, observed] = 1.0
        yv = np.zeros((2, d))
        yv[:, observed] = values

        def bc(a, b, d=d, w=w, yv=yv, rm=rm):
            return np.concatenate(
                [a[d:] - rm * w[0] * (a[:d] - yv[0]), b[d:] + rm * w[1] * (b[:d] - yv[1])]
            )

        mesh = np.linspace(times[0], times[1], 11)
        guess = np.zeros((2 * d, mesh.size))
        for j, i in enumerate(observed):
            guess[i] = np.interp(mesh, times, np.asarray(values)[:, j])
        sol = scipy.integrate.solve_bvp(
            lambda t, y, rf=rf, f=numpy_field: f(y, rf),
            bc,
            mesh,
            guess,
            tol=1e-10,
            max_nodes=100_000,
        )
        assert sol.status == 0
        out[name] = sol
    return out


@pytest.mark.parametrize("method", ["multiple-shooting-tsit5", "collocation"])
@pytest.mark.parametrize("name", list(NONLINEAR))
def test_nonlinear_matches_scipy(name, method, solve, scipy_solutions):
    model, times, values, observed, rm, rf, _ = NONLINEAR[name]
    data = deepest.Observations(times, values, observed)
    dim = 2 if name == "pendulum" else 3
    problem = deepest.ContinuousAssimilation(model, data, rm, rf, dim=dim)
    sol = solve(problem, method)
    reference = scipy_solutions[name]
    x, p = jax.vmap(sol.evaluate)(jnp.asarray(reference.x))
    scale = max(1.0, float(np.max(np.abs(reference.y))))
    assert np.max(np.abs(x - reference.y[:dim].T)) < 1e-6 * scale
    assert np.max(np.abs(p - reference.y[dim:].T)) < 1e-6 * scale


def test_adaptive_multiple_shooting_matches_scipy(scipy_solutions):
    model, times, values, observed, rm, rf, _ = NONLINEAR["pendulum"]
    problem = deepest.ContinuousAssimilation(
        model, deepest.Observations(times, values, observed), rm, rf
    )
    method = deepest.MultipleShooting(
        2, steps_per_segment=16, stepsize_controller=diffrax.PIDController(1e-12, 1e-12)
    )
    sol = eqx.filter_jit(deepest.solve_tpbvp)(problem, method)
    reference = scipy_solutions["pendulum"]
    # Dense output between the 16 saved points per segment is cubic Hermite (h = 1/32).
    x, _ = jax.vmap(sol.evaluate)(jnp.asarray(reference.x))
    assert np.max(np.abs(x - reference.y[:2].T)) < 1e-6


# -- conservation of the Hamiltonian -----------------------------------------------------


@pytest.fixture(scope="module")
def long_pendulum(solve):
    model, times, values, observed, rm, rf, _ = NONLINEAR["pendulum"]
    problem = deepest.ContinuousAssimilation(
        model, deepest.Observations([0.0, 4.0], values, observed), rm, rf
    )
    return problem, solve(problem, "multiple-shooting-tsit5")


def test_hamiltonian_constant_along_solution(long_pendulum):
    problem, sol = long_pendulum
    energy = jax.vmap(problem.hamiltonian, in_axes=(None, 0, 0))(0.0, sol.xs, sol.ps)
    # Tsit5 at h = 1/32: the path is accurate to ~1e-8, and so is 𝓗 (|𝓗| ~ 1).
    assert float(jnp.max(jnp.abs(energy - energy[0]))) < 1e-7


@pytest.mark.parametrize(
    "solver, order",
    [(diffrax.Tsit5(), 5), (deepest.integrators.SymplecticGaussLegendre(), 4)],
    ids=["tsit5", "gauss-legendre"],
)
def test_hamiltonian_conserved_to_integrator_order(solver, order, long_pendulum):
    # From the solution's (x(0), p(0)), integrate the autonomous canonical equations at
    # two step sizes; the drift of 𝓗 falls as h^order.
    problem, sol = long_pendulum
    y0 = (sol.xs[0], sol.ps[0])

    @jax.jit
    def drift(dt):
        out = diffrax.diffeqsolve(
            diffrax.ODETerm(problem.vector_field),
            solver,
            0.0,
            4.0,
            dt,
            y0,
            saveat=diffrax.SaveAt(steps=True),
            max_steps=64,
        )
        energy = jax.vmap(problem.hamiltonian, in_axes=(None, 0, 0))(0.0, *out.ys)
        done = jnp.isfinite(out.ts)
        return jnp.max(jnp.where(done, jnp.abs(energy - problem.hamiltonian(0.0, *y0)), 0))

    coarse, fine = float(drift(4.0 / 32)), float(drift(4.0 / 64))
    slope = np.log2(coarse / fine)
    assert abs(slope - order) < 0.5, (coarse, fine, slope)


# -- batching, continuation, differentiation ---------------------------------------------


def _pendulum_problem(values=((1.0, 0.0), (-0.5, 0.3)), rf=1.0, g=4.0):
    data = deepest.Observations([0.0, 1.0], np.asarray(values), [0, 1])
    return deepest.ContinuousAssimilation(Pendulum(jnp.asarray(g)), data, 10.0, rf)


def test_vmap_over_problems_and_guesses(solve):
    problem = _pendulum_problem()
    method = METHODS["multiple-shooting-tsit5"]
    with_values = lambda v: eqx.tree_at(lambda p: p.values, problem, v)
    start = problem.values[0]
    # One batch mixing different data (problems) and different initial guesses.
    ends = ([-0.5, 0.3],) * 3 + ([0.4, -0.2], [1.0, 1.0])
    values = jnp.stack([jnp.stack([start, jnp.array(end)]) for end in ends])
    offsets = jnp.array([0.0, 0.3, -0.3, 0.0, 0.0])

    def one(v, c):
        guess = lambda t: (problem.initial_guess(t)[0] + c, jnp.zeros(2))
        return deepest.solve_tpbvp(with_values(v), method, guess)

    sols = eqx.filter_jit(jax.vmap(one))(values, offsets)
    for i in (0, 1, 2, 3, 4):
        single = solve(with_values(values[i]), "multiple-shooting-tsit5")
        assert jnp.allclose(sols.xs[i], single.xs, atol=1e-10)
    assert not jnp.allclose(sols.xs[3], sols.xs[4], atol=1e-3)


def test_continuation_in_rf_reaches_the_direct_solution():
    problem = _pendulum_problem(rf=1.0)
    method = deepest.MultipleShooting(4, steps_per_segment=16)
    rfs = 0.01 * 4.0 ** jnp.arange(6.0)
    sols = eqx.filter_jit(deepest.anneal_tpbvp)(problem, rfs, method)
    assert sols.xs.shape[0] == 6 and bool(jnp.all(sols.converged))
    direct = eqx.filter_jit(deepest.solve_tpbvp)(
        eqx.tree_at(lambda p: p.rf, problem, rfs[-1]), method
    )
    assert jnp.allclose(sols.xs[-1], direct.xs, atol=1e-10)
    # Small R_f: the path sits on the data; the model term weighs more as R_f grows.
    misfit = jnp.abs(sols.xs[:, 0] - problem.values[0][None])
    assert misfit[0, 0] < misfit[-1, 0]


@pytest.mark.parametrize(
    "method",
    [deepest.MultipleShooting(4, steps_per_segment=16), deepest.Collocation(17)],
    ids=["multiple-shooting", "collocation"],
)
def test_solution_differentiable_through_implicit_function_theorem(method):
    problem = _pendulum_problem()

    def x_end(g):
        with_g = eqx.tree_at(lambda p: p.field.model.g, problem, g)
        return deepest.solve_tpbvp(with_g, method).xs[-1, 0]

    grad = jax.jit(jax.grad(x_end))(jnp.asarray(4.0))
    h = 1e-5
    fd = (jax.jit(x_end)(4.0 + h) - jax.jit(x_end)(4.0 - h)) / (2 * h)
    # Central difference: truncation O(h²) ~ 1e-10, rounding ~1e-11/h ~ 1e-6·|x|.
    assert jnp.allclose(grad, fd, rtol=1e-6, atol=1e-8)


# -- collocation: the structured Newton matrix -------------------------------------------


@pytest.mark.parametrize("name", ["linear-with-jump", "lorenz63-partial"])
def test_collocation_jacobian_blocks_match_autodiff(name):
    # The per-interval blocks are assembled from the field's Jacobian at the stages and the
    # Lobatto coefficients; they must equal jacfwd of the residual itself (exact up to
    # rounding), with the interior jump included.
    if name == "linear-with-jump":
        data = deepest.Observations(TIMES, Y, [0, 1], mask=MASK)
        problem = deepest.ContinuousAssimilation(Linear(jnp.asarray(A)), data, RM, RF)
    else:
        model, times, values, observed, rm, rf, _ = NONLINEAR[name]
        data = deepest.Observations(times, values, observed)
        problem = deepest.ContinuousAssimilation(model, data, rm, rf, dim=3)
    nodes = problem.node_times()
    k = nodes.shape[0]
    method = deepest.Collocation(4)  # 3 intervals between consecutive node times
    mesh = method.initial_mesh(nodes)
    d = problem.dim
    n = 3 * (k - 1)
    ys = jnp.sin(jnp.arange((n + 1) * 2 * d, dtype=float)).reshape(n + 1, 2 * d)
    zs = jnp.cos(jnp.arange(n * 5 * d, dtype=float)).reshape(n, 5 * d)

    def residual_fn(ys, zs):
        return method.residual(problem, mesh, ys, zs)

    @jax.jit
    def both(ys, zs):
        assembled = method.jacobian(problem, mesh, ys, zs)
        return assembled, residual_fn(ys, zs), jax.jacfwd(residual_fn, argnums=(0, 1))(ys, zs)

    (residual, (jac, bjac)), want_residual, full = both(ys, zs)
    for got, want in zip(residual, want_residual):
        assert jnp.allclose(got, want, rtol=0, atol=1e-12)
    (stage_y, stage_z), (cont_y, cont_z), (bound_y, _) = full
    i = np.arange(n)
    want = jnp.concatenate(
        [
            jnp.concatenate([stage_y[i, :, i], stage_z[i, :, i]], axis=-1),
            jnp.concatenate([cont_y[i, :, i], cont_z[i, :, i]], axis=-1),
        ],
        axis=1,
    )
    assert jnp.allclose(jac, want, rtol=0, atol=1e-12)
    assert jnp.allclose(bjac, jnp.concatenate([bound_y[:, 0], bound_y[:, -1]], axis=1))


# -- collocation: mesh refinement inside jit ----------------------------------------------

REFINING = deepest.Collocation(5, tol=1e-6, max_nodes=257)


def _scipy_nodes(name, tol):
    """The mesh size scipy's solve_bvp needs for an rms residual `tol` on the same problem."""
    _, times, values, observed, rm, rf, numpy_field = NONLINEAR[name]
    d = 2 if name == "pendulum" else 3
    w = np.zeros((2, d))
    w[:, observed] = 1.0
    yv = np.zeros((2, d))
    yv[:, observed] = values
    mesh = np.linspace(times[0], times[1], 11)
    guess = np.zeros((2 * d, mesh.size))
    for j, i in enumerate(observed):
        guess[i] = np.interp(mesh, times, np.asarray(values)[:, j])
    sol = scipy.integrate.solve_bvp(
        lambda t, y: numpy_field(y, rf),
        lambda a, b: np.concatenate(
            [a[d:] - rm * w[0] * (a[:d] - yv[0]), b[d:] + rm * w[1] * (b[:d] - yv[1])]
        ),
        mesh,
        guess,
        tol=tol,
    )
    assert sol.status == 0
    return sol.x.size


@pytest.mark.parametrize("name", list(NONLINEAR))
def test_collocation_refines_until_the_tolerance_is_met(name, scipy_solutions):
    model, times, values, observed, rm, rf, _ = NONLINEAR[name]
    dim = 2 if name == "pendulum" else 3
    problem = deepest.ContinuousAssimilation(
        model, deepest.Observations(times, values, observed), rm, rf, dim=dim
    )
    solve = eqx.filter_jit(deepest.solve_tpbvp)
    # The uniform 5-node mesh does not meet the tolerance (no room to refine: flagged) …
    coarse = solve(problem, deepest.Collocation(5, tol=1e-6, max_nodes=5), throw=False)
    assert coarse.result == deepest.RESULTS.max_nodes_reached
    assert int(coarse.n_nodes) == 5
    # … the refined mesh does, with a mesh of the size scipy's solve_bvp chooses for the same
    # rms residual (the same estimate and splitting rule), and agrees with scipy at 1e-10.
    refined = solve(problem, REFINING)
    assert refined.converged
    n_scipy = _scipy_nodes(name, 1e-6)
    assert 0.5 * n_scipy < int(refined.n_nodes) < 2 * n_scipy, (int(refined.n_nodes), n_scipy)
    reference = scipy_solutions[name]
    scale = max(1.0, float(np.max(np.abs(reference.y))))
    errors = []
    for sol in (coarse, refined):
        x, p = jax.vmap(sol.evaluate)(jnp.asarray(reference.x))
        errors.append(
            max(np.max(np.abs(x - reference.y[:dim].T)), np.max(np.abs(p - reference.y[dim:].T)))
        )
    # An rms relative residual of 1e-6 on an order-4 mesh: errors ≈ 1e-8 here (measured
    # 2e-8), the coarse mesh ≈ 1e-3.
    assert errors[1] < 1e-6 * scale, errors
    assert errors[0] > 100 * errors[1], errors
    if name == "pendulum":  # one compile suffices to check the raise
        with pytest.raises(RuntimeError, match="max_nodes"):
            solve(problem, deepest.Collocation(5, tol=1e-6, max_nodes=5))


def test_collocation_refinement_under_vmap():
    # Problems with different data refine to different meshes inside one vmapped call;
    # every lane equals its own single solve.
    problem = _pendulum_problem()
    with_values = lambda v: eqx.tree_at(lambda p: p.values, problem, v)
    start = problem.values[0]
    ends = ([-0.5, 0.3], [0.0, 0.0], [1.5, -1.0])
    values = jnp.stack([jnp.stack([start, jnp.array(end)]) for end in ends])
    solve = lambda v: deepest.solve_tpbvp(with_values(v), REFINING)
    sols = eqx.filter_jit(jax.vmap(solve))(values)
    assert bool(jnp.all(sols.converged))
    assert len(set(np.asarray(sols.n_nodes).tolist())) > 1, sols.n_nodes
    single = eqx.filter_jit(solve)
    for i in range(len(ends)):
        one = single(values[i])
        assert int(one.n_nodes) == int(sols.n_nodes[i])
        assert jnp.allclose(sols.xs[i], one.xs, atol=1e-10)
        assert jnp.allclose(sols.ps[i], one.ps, atol=1e-10)


# -- bad input -----------------------------------------------------------------------------


def _field(t, y, args):
    x, p = y
    return p, -x


def test_bad_input_is_refused_before_compute():
    bc = lambda y0, y1: jnp.concatenate([y0[0] - 1.0, y1[0]])
    with pytest.raises(ValueError, match="2·dim"):
        deepest.BoundaryValueProblem(_field, lambda y0, y1: y0[0] - 1.0, 0.0, 1.0, dim=1)
    with pytest.raises(ValueError, match="t0 < t1"):
        deepest.BoundaryValueProblem(_field, bc, 1.0, 1.0, dim=1)
    with pytest.raises(ValueError, match="t0 < t1"):
        deepest.BoundaryValueProblem(_field, bc, 0.0, -1.0, dim=1)
    problem = deepest.BoundaryValueProblem(_field, bc, 0.0, 1.0, dim=1)
    with pytest.raises(TypeError, match="AbstractAnnealableBoundaryValueProblem"):
        deepest.anneal_tpbvp(problem, [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        deepest.solve_tpbvp(problem, guess=lambda t: (jnp.full(1, jnp.nan), jnp.zeros(1)))
    with pytest.raises(ValueError, match="shape"):
        deepest.solve_tpbvp(problem, guess=lambda t: (jnp.zeros(3), jnp.zeros(3)))
    data = deepest.Observations([0.0, 1.0], [[1.0, 0.0], [0.0, 1.0]], [0, 1])
    with pytest.raises(ValueError, match="shape"):
        # A 3-component model with 2-component boundary data fails the field-shape check.
        deepest.ContinuousAssimilation(lambda t, x, a: x[:2], data, 1.0, 1.0, dim=3, params={})
    with pytest.raises(ValueError, match="rf"):
        deepest.ContinuousAssimilation(Pendulum(jnp.asarray(1.0)), data, 1.0, -1.0)
    with pytest.raises(ValueError, match="n_segments"):
        deepest.MultipleShooting(0)
    with pytest.raises(ValueError, match="tol"):
        deepest.Collocation(5, tol=-1e-6)
    with pytest.raises(ValueError, match="max_nodes"):
        deepest.Collocation(5, tol=1e-6, max_nodes=3)
    with pytest.raises(ValueError, match="max_nodes"):
        # 5 nodes on each of the two intervals between the three node times need 9.
        three_nodes = deepest.BoundaryValueProblem(
            _field, bc, 0.0, 1.0, dim=1, jump_times=[0.5], jump=lambda k, y: y
        )
        deepest.solve_tpbvp(three_nodes, deepest.Collocation(5, tol=1e-6, max_nodes=8))


def test_nonconvergence_is_flagged_or_raised():
    # One Newton step cannot solve a nonlinear problem: flagged, or raised with throw=True.
    method = deepest.MultipleShooting(4, steps_per_segment=16, max_newton_steps=1)
    problem = _pendulum_problem()
    solve = eqx.filter_jit(deepest.solve_tpbvp)
    sol = solve(problem, method, throw=False)
    assert not bool(sol.converged)
    assert sol.result == deepest.RESULTS.nonlinear_max_steps_reached
    with pytest.raises(RuntimeError, match="did not converge"):
        solve(problem, method, throw=True)
