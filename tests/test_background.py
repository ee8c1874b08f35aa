"""The background term of `deepest.Assimilation`: the Gaussian prior ½(z − x_b)ᵀB⁻¹(z − x_b)
on the first state (and the parameters) enters A₀ exactly, and A = (2/n_m)·A₀ as
(1/n_m)·(z − x_b)ᵀB⁻¹(z − x_b); its banded rows carry it to the minimisers and `laplace`,
checked against the dense closed form of a linear-Gaussian problem."""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest

DIM, OBSERVED, N_OBS, DT, SPO = 3, (0,), 8, 0.2, 2
A = np.array([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.0, -0.3, -0.2]])
C = np.array([0.3, -0.2, 0.1])  # the constant forcing, estimated
RM, NOISE = 1 / 0.2**2, 0.2
X_B = np.array([1.1, -0.2, 0.4])  # the background mean of x₀ …
C_B = np.array([0.25, -0.1, 0.2])  # … and of c


def _field(t, x, params):
    return jnp.asarray(A) @ x + params["c"]


def _data(masked: bool):
    times = np.arange(N_OBS) * DT
    x, truth = np.array([1.0, 0.0, 0.5]), []
    for _t in times:  # fine Euler steps: any smooth truth will do
        truth.append(x)
        for _step in range(100):
            x = x + DT / 100 * (A @ x + C)
    truth = np.array(truth)
    noise = np.random.default_rng(0).normal(size=(N_OBS, len(OBSERVED)))
    values = truth[:, list(OBSERVED)] + NOISE * noise
    mask = None
    if masked:
        mask = np.ones_like(values, bool)
        mask[[2, 5], 0] = False
        values[~mask] = np.nan
    return deepest.Observations(times, values, OBSERVED, truth=truth, noise=NOISE, mask=mask)


def _problem(background=None, masked=False):
    return deepest.Assimilation(
        _field,
        _data(masked),
        rm=RM,
        params={"c": C},
        estimate=("c",),
        steps_per_obs=SPO,
        background=background,
    )


def _covariance(n, diagonal):
    if diagonal:
        return np.diag(np.linspace(0.2, 0.7, n))
    m = np.random.default_rng(1).normal(size=(n, n))
    return 0.3 * m @ m.T / n + 0.1 * np.eye(n)


def _forms(cov, diagonal):
    """The same B as a matrix, its Cholesky factor, and (when diagonal) its diagonal."""
    forms = [{"cov": cov}, {"chol": np.linalg.cholesky(cov)}]
    return forms + [{"diag": np.diag(cov)}] if diagonal else forms


def _unknowns(problem):
    u = problem.init(jr.key(1))
    u = jax.tree.map(jnp.nan_to_num, u)
    leaves, tree = jax.tree.flatten(u)
    keys = jr.split(jr.key(2), len(leaves))
    return jax.tree.unflatten(
        tree, [a + 0.3 * jr.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    )


CASES = [
    (on, diagonal, masked)
    for on in ("state", "state_and_params")
    for diagonal in (False, True)
    for masked in (False, True)
]


@pytest.mark.parametrize(
    "on,diagonal,masked",
    CASES,
    ids=[f"{o}-{'diag' if d else 'full'}-{'masked' if m else 'all'}" for o, d, m in CASES],
)
def test_background_adds_the_quadratic_form(on, diagonal, masked):
    mean = X_B if on == "state" else np.concatenate([X_B, C_B])
    cov = _covariance(mean.size, diagonal)
    plain = _problem(masked=masked)
    u = _unknowns(plain)
    z = np.asarray(u["path"][0])
    if on == "state_and_params":
        z = np.concatenate([z, np.asarray(u["params"]["c"])])
    quadratic = float((z - mean) @ np.linalg.solve(cov, z - mean))
    n_m = N_OBS * len(OBSERVED) - (2 if masked else 0)
    rf = 3.0
    actions = []
    for form in _forms(cov, diagonal):
        problem = _problem(deepest.Background(mean, **form), masked=masked)
        assert float(problem.action_counts[0]) == n_m
        # A₀ gains exactly the Gaussian prior's ½(z − x_b)ᵀB⁻¹(z − x_b), whatever R_f …
        for r in (rf, 50.0):
            gained = problem.unnormalised_action(u, r) - plain.unnormalised_action(u, r)
            assert float(gained) == pytest.approx(0.5 * quadratic, rel=1e-11)
        # … so A = (2/n_m)·A₀ gains (1/n_m)·(z − x_b)ᵀB⁻¹(z − x_b), in the measurement term
        gained = problem.action(u, rf) - plain.action(u, rf)
        assert float(gained) == pytest.approx(quadratic / n_m, rel=1e-11)
        gained = problem.measurement_error(u) - plain.measurement_error(u)
        assert float(gained) == pytest.approx(quadratic / n_m, rel=1e-11)
        assert float(problem.model_error(u)) == float(plain.model_error(u))
        actions.append(float(problem.action(u, rf)))
    # the matrix, its Cholesky factor and the diagonal give the same action
    np.testing.assert_allclose(actions, actions[0], rtol=1e-13)


@pytest.mark.parametrize("on", ["state", "state_and_params"])
def test_banded_residuals_carry_the_background(on):
    mean = X_B if on == "state" else np.concatenate([X_B, C_B])
    problem = _problem(deepest.Background(mean, cov=_covariance(mean.size, False)), masked=True)
    plain = _problem(masked=True)
    u = _unknowns(problem)
    rf = np.array([2.0, 3.0, 4.0])
    states, params = problem.to_banded(u)
    node, interval = problem.banded_residuals(states, params, rf)
    n_model = (N_OBS - 1) * SPO + 1
    assert node.shape == (n_model, len(OBSERVED) + mean.size)
    # the background's rows: the first node's alone
    assert np.all(np.asarray(node)[1:, len(OBSERVED) :] == 0)
    assert np.any(np.asarray(node)[0, len(OBSERVED) :] != 0)
    total = float(jnp.sum(node**2) + jnp.sum(interval**2))
    assert total == pytest.approx(float(problem.action(u, rf)), rel=1e-12)
    assert total > float(plain.action(u, rf))
    node0, interval0 = problem.unnormalised_banded_residuals(states, params, rf)
    a0 = 0.5 * float(jnp.sum(node0**2) + jnp.sum(interval0**2))
    assert a0 == pytest.approx(float(problem.unnormalised_action(u, rf)), rel=1e-12)


def _residuals_by_hand(y, problem, rf, chol, mean):
    """The stacked residuals r(y) of A₀ = ½|r|² written out from the definitions, y the
    path (N_model·D) followed by c (D): R_m-whitened misfits, the trapezoid residuals with
    the model error's precision R_f·n_m/n_f, and L⁻¹(z − x_b). Affine in y."""
    n_model = (N_OBS - 1) * SPO + 1
    path, c = y[: n_model * DIM].reshape(n_model, DIM), y[n_model * DIM :]
    values = np.asarray(problem.data.values)
    misfit = path[::SPO][:, list(OBSERVED)] - values
    n_m, n_f = values.size, DIM * (n_model - 1)
    h = DT / SPO
    f = path @ jnp.asarray(A).T + c[None]
    model = path[1:] - path[:-1] - h / 2 * (f[1:] + f[:-1])
    z = jnp.concatenate([path[0], c])
    return jnp.concatenate(
        [
            np.sqrt(RM) * misfit.ravel(),
            jnp.sqrt(rf * n_m / n_f) * model.ravel(),
            jax.scipy.linalg.solve_triangular(jnp.asarray(chol), z - mean, lower=True),
        ]
    )


@functools.cache
def _closed_form():
    """The minimiser and H = JᵀJ (= ∇²A₀ exactly, r being affine) of the linear problem
    with a background on (x₀, c), at the last β's R_f."""
    mean = np.concatenate([X_B, C_B])
    cov = _covariance(mean.size, False)
    chol = np.linalg.cholesky(cov)
    problem = _problem(deepest.Background(mean, chol=chol))
    schedule = deepest.AnnealSchedule(rf0=1.0, alpha=2.0, n_beta=4)
    rf = 8.0
    n = ((N_OBS - 1) * SPO + 1) * DIM + DIM
    residuals = lambda y: _residuals_by_hand(y, problem, rf, chol, mean)  # noqa: E731
    zero = jnp.zeros(n)
    jac = np.asarray(jax.jit(jax.jacfwd(residuals))(zero))
    minimiser = np.linalg.lstsq(jac, -np.asarray(residuals(zero)), rcond=None)[0]
    return problem, schedule, minimiser, jac.T @ jac, residuals


@pytest.mark.parametrize(
    "minimiser",
    [deepest.LevenbergMarquardt(), deepest.LBFGS()],
    ids=["levenberg_marquardt", "lbfgs"],
)
def test_anneal_and_laplace_reach_the_dense_closed_form(minimiser):
    problem, schedule, expected, hessian, residuals = _closed_form()
    result = deepest.anneal(
        problem,
        schedule,
        n_paths=2,
        key=jr.key(0),
        minimiser=minimiser,
        ftol=1e-15,
        gtol=1e-13,
        progress=False,
    )
    assert float(result.rf[-1]) == 8.0
    n_path = ((N_OBS - 1) * SPO + 1) * DIM
    want_path = expected[:n_path].reshape(-1, DIM)
    scale = np.abs(want_path).max()
    for i in range(2):
        u = result.path_unknowns(i)
        np.testing.assert_allclose(u["path"], want_path, rtol=1e-8, atol=1e-8 * scale)
        np.testing.assert_allclose(u["params"]["c"], expected[n_path:], rtol=1e-8, atol=1e-8)
    # A₀ at the minimum by hand: the library's action is the one the closed form minimises
    a0 = float(problem.unnormalised_action(result.path_unknowns(0), 8.0))
    want = 0.5 * float(jnp.sum(residuals(jnp.asarray(expected)) ** 2))
    assert a0 == pytest.approx(want, rel=1e-9)
    # the Laplace covariance is H⁻¹
    lap = deepest.laplace(problem, result)
    std = np.sqrt(np.diag(np.linalg.inv(hessian)))
    for i in range(2):
        np.testing.assert_allclose(lap.paths_std[i], std[:n_path].reshape(-1, DIM), rtol=1e-8)
        np.testing.assert_allclose(lap.params_std["c"][i], std[n_path:], rtol=1e-8)


def test_bad_backgrounds():
    good = _covariance(3, False)
    with pytest.raises(ValueError, match="`mean` must be a vector"):
        deepest.Background(np.ones((3, 1)), cov=good)
    with pytest.raises(ValueError, match="`mean` must be finite"):
        deepest.Background([0.0, np.nan, 1.0], cov=good)
    with pytest.raises(ValueError, match="exactly one of `cov`, `chol` or `diag`; got none"):
        deepest.Background(X_B)
    with pytest.raises(ValueError, match="exactly one of .* got `cov`, `diag`"):
        deepest.Background(X_B, cov=good, diag=np.ones(3))
    with pytest.raises(ValueError, match=r"`cov` must have shape \(3, 3\)"):
        deepest.Background(X_B, cov=np.eye(4))
    with pytest.raises(ValueError, match="`cov` must be symmetric"):
        deepest.Background(X_B, cov=good + np.triu(np.ones((3, 3)), 1))
    with pytest.raises(ValueError, match="`cov` must be positive definite"):
        deepest.Background(X_B, cov=np.diag([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="`cov` must be positive definite"):
        deepest.Background(X_B, cov=np.ones((3, 3)))  # singular
    with pytest.raises(ValueError, match="`cov` must be finite"):
        deepest.Background(X_B, cov=np.full((3, 3), np.inf))
    with pytest.raises(ValueError, match=r"`chol` must have shape \(3, 3\)"):
        deepest.Background(X_B, chol=np.eye(2))
    with pytest.raises(ValueError, match="`chol` must be lower triangular"):
        deepest.Background(X_B, chol=np.linalg.cholesky(good).T)
    with pytest.raises(ValueError, match="`chol` must have a positive diagonal"):
        deepest.Background(X_B, chol=np.diag([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"`diag` must have shape \(3,\)"):
        deepest.Background(X_B, diag=np.ones(4))
    with pytest.raises(ValueError, match="`diag` .* must be positive and finite"):
        deepest.Background(X_B, diag=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="`diag` .* must be positive and finite"):
        deepest.Background(X_B, diag=[1.0, np.inf, 1.0])
    # the size fits the first state (D) or it and the estimated parameters (D + p)
    with pytest.raises(
        ValueError, match=r"`background` must be on the first state \(3 entries\) or"
    ):
        _problem(deepest.Background(np.zeros(5), diag=np.ones(5)))
    with pytest.raises(ValueError, match=r"first state \(3 entries\); its mean has 6"):
        deepest.Assimilation(
            _field, _data(False), rm=RM, params={"c": C},
            background=deepest.Background(np.zeros(6), diag=np.ones(6)),
        )  # fmt: skip
    with pytest.raises(TypeError, match="`background` must be a deepest.Background"):
        _problem(background=X_B)
