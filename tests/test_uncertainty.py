"""Uncertainty: the selected inversion, the Laplace approximation and precision annealing
Monte Carlo, against dense linear algebra and the closed form of a Gaussian posterior."""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

import deepest

from .helpers import small_problem

ROTATION = np.array([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.0, -0.3, -0.2]])


def _bordered(n, d, p, seed=0):
    """A random SPD bordered block-tridiagonal H = JᵀJ + 0.1·I, as blocks and dense."""
    rng = np.random.default_rng(seed)
    size = n * d + p
    dense = 0.1 * np.eye(size)
    for t in range(n - 1):
        rows = rng.normal(size=(2 * d + 1, 2 * d + p))
        local = rows.T @ rows
        idx = np.r_[t * d : (t + 2) * d, n * d : size]
        dense[np.ix_(idx, idx)] += local
    blocks = (
        np.stack([dense[i * d : (i + 1) * d, i * d : (i + 1) * d] for i in range(n)]),
        np.stack([dense[i * d : (i + 1) * d, (i + 1) * d : (i + 2) * d] for i in range(n - 1)]),
        np.stack([dense[i * d : (i + 1) * d, n * d :] for i in range(n)]),
        dense[n * d :, n * d :],
    )
    return [jnp.asarray(b) for b in blocks], dense


@pytest.mark.parametrize("p", [0, 2])
def test_selected_inversion_equals_dense_inverse(p):
    n, d = 9, 3
    blocks, dense = _bordered(n, d, p)
    out = deepest.selected_inversion(*blocks)
    inverse = np.linalg.inv(dense)
    scale = np.abs(inverse).max()
    for i in range(n):
        block = inverse[i * d : (i + 1) * d, i * d : (i + 1) * d]
        assert np.abs(out.diagonal[i] - block).max() <= 1e-12 * scale
        border = inverse[i * d : (i + 1) * d, n * d :]
        np.testing.assert_allclose(out.border[i], border, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(out.corner, inverse[n * d :, n * d :], rtol=0, atol=1e-12 * scale)
    assert float(out.log_det) == pytest.approx(np.linalg.slogdet(dense)[1], rel=1e-12)
    assert bool(out.positive_definite)


@pytest.mark.parametrize("p", [0, 2])
def test_selected_inversion_and_solves_equal_dense_solve(p):
    from deepest._uncertainty._selected_inversion import (
        selected_inversion_and_solve,
        solve_eliminated,
    )

    n, d = 9, 3
    blocks, dense = _bordered(n, d, p)
    rhs = np.random.default_rng(1).normal(size=n * d + p)
    args = jnp.asarray(rhs[: n * d].reshape(n, d)), jnp.asarray(rhs[n * d :])
    inverse, (x, theta) = selected_inversion_and_solve(*blocks, *args)
    exact = np.linalg.solve(dense, rhs)
    np.testing.assert_allclose(np.r_[np.ravel(x), theta], exact, rtol=1e-11)
    x, theta = solve_eliminated(*blocks, *args)
    np.testing.assert_allclose(np.r_[np.ravel(x), theta], exact, rtol=1e-11)
    reference = deepest.selected_inversion(*blocks)
    for a, b in zip(jax.tree.leaves(inverse), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)


def test_selected_inversion_flags_indefinite():
    blocks, _ = _bordered(6, 2, 1)
    blocks[0] = blocks[0].at[3, 1, 1].set(-50.0)
    out = deepest.selected_inversion(*blocks)
    assert not bool(out.positive_definite)


@functools.cache
def _linear_gaussian():
    """A damped rotation in D = 3, trapezoid rule, N = 40, component 0 observed: A₀ is
    quadratic, so the posterior is exactly Gaussian."""
    times = np.linspace(0.0, 4.0, 40)
    truth = np.stack([scipy.linalg.expm(ROTATION * t) @ [1.0, 0.0, 0.5] for t in times])
    noise = np.random.default_rng(0).normal(size=(40, 1))
    data = deepest.Observations(
        times, truth[:, [0]] + 0.2 * noise, observed=[0], truth=truth, noise=0.2
    )
    problem = deepest.Assimilation(lambda t, x: jnp.asarray(ROTATION) @ x, data, rm=1 / 0.2**2)
    schedule = deepest.AnnealSchedule(rf0=1.0, alpha=2.0, n_beta=6)
    result = deepest.anneal(
        problem, schedule, n_paths=2, key=jr.key(0), minimiser=deepest.LevenbergMarquardt()
    )
    return problem, schedule, result


def _dense_posterior(problem, rf):
    """The closed form: H = ∇²A₀ (constant), mean = −H⁻¹∇A₀(0), covariance H⁻¹."""
    template = problem.init(jr.key(0))
    y0, unravel = ravel_pytree(template)
    a0 = lambda y: problem.unnormalised_action(unravel(y), rf)  # noqa: E731
    zero = jnp.zeros_like(y0)
    hessian = jax.hessian(a0)(zero)
    mean = jnp.linalg.solve(hessian, -jax.grad(a0)(zero))
    return np.asarray(mean), np.asarray(jnp.linalg.inv(hessian)), hessian


def test_unnormalised_action_is_the_stated_multiple():
    problem, _, result = _linear_gaussian()
    u = result.path_unknowns(0)
    n_m, n_f = problem.action_counts
    assert (n_m, n_f) == (40, 3 * 39)
    rf = 7.0
    path = np.asarray(u["path"])
    meas = np.sum((path[:, 0] - np.asarray(problem.data.values[:, 0])) ** 2)
    model = float(problem.model_error(u)) * n_f  # Σ residual²
    expected = 0.5 / 0.2**2 * meas + 0.5 * rf * n_m / n_f * model
    assert float(problem.unnormalised_action(u, rf)) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("gauss_newton", [False, True])
def test_laplace_is_exact_for_a_linear_gaussian_problem(gauss_newton):
    problem, _, result = _linear_gaussian()
    rf = result.rf[-1]
    mean, covariance, hessian = _dense_posterior(problem, rf)
    lap = deepest.laplace(problem, result, gauss_newton=gauss_newton)
    assert lap.positive_definite.all()
    for i in range(2):
        got_mean = ravel_pytree(jax.tree.map(lambda a, i=i: a[i], lap.unknowns))[0]
        got_var = ravel_pytree(jax.tree.map(lambda a, i=i: a[i] ** 2, lap.std))[0]
        np.testing.assert_allclose(got_mean, mean, rtol=1e-10, atol=1e-10 * np.abs(mean).max())
        np.testing.assert_allclose(got_var, np.diag(covariance), rtol=1e-10)
    assert lap.log_det[0] == pytest.approx(np.linalg.slogdet(hessian)[1], rel=1e-12)
    # log mass = −A₀* − ½ log det H + (n/2) log 2π: the log of ∫exp(−A₀) for a Gaussian
    n = mean.size
    a0 = float(problem.unnormalised_action(jax.tree.map(lambda a: a[0], lap.unknowns), rf))
    expected = -a0 - 0.5 * np.linalg.slogdet(hessian)[1] + 0.5 * n * np.log(2 * np.pi)
    assert lap.log_mass[0] == pytest.approx(expected, rel=1e-12)


def test_laplace_forecast_band_is_the_propagated_gaussian():
    problem, _, result = _linear_gaussian()
    lap = deepest.laplace(problem, result, paths=[1])
    n = 4000
    times, mean, std = lap.forecast(5.0, n_times=5, n_samples=n)
    # Linear model: the forecast is E·x_end with E = exp(A (t − 4)), so it is Gaussian with
    # covariance E·Σ_end·Eᵀ; a sample std of n draws is within ~1/√(2n) = 1.1% (5σ: 6%).
    end_cov = lap.end_covariance[0]
    end_mean = lap.unknowns["path"][0, -1]
    for t, m, s in zip(times, mean, std, strict=True):
        e = scipy.linalg.expm(ROTATION * (t - 4.0))
        exact = np.sqrt(np.diag(e @ end_cov @ e.T))
        np.testing.assert_allclose(s, exact, rtol=0.06)
        np.testing.assert_allclose(m, e @ end_mean, atol=5 * exact.max() / np.sqrt(n))
    np.testing.assert_allclose(end_cov.diagonal()[:3] ** 0.5, lap.paths_std[0, -1], rtol=1e-12)


@pytest.mark.optimised
def test_pamc_matches_the_gaussian_posterior():
    problem, schedule, result = _linear_gaussian()
    rf = result.rf[-1]
    mean, covariance, _ = _dense_posterior(problem, rf)
    out = deepest.pamc(
        problem,
        schedule,
        n_chains=32,
        key=jr.key(3),
        n_samples=200,
        n_warmup=150,
        betas=[5],
        init=result,
    )
    assert out.finite.all() and out.betas.tolist() == [5]
    got = ravel_pytree(jax.tree.map(lambda a: a[-1], out.mean))[0]
    se = ravel_pytree(jax.tree.map(lambda a: a[-1], out.mc_error))[0]
    # ≥ 99% of coordinates within 4 Monte Carlo standard errors (from the ESS)
    assert np.mean(np.abs(got - mean) <= 4 * se) >= 0.99
    var = ravel_pytree(jax.tree.map(lambda a: a[-1] ** 2, out.std))[0]
    np.testing.assert_allclose(var, np.diag(covariance), rtol=0.10)
    # ⟨A₀⟩ of a Gaussian is A₀* + n/2
    unravel = ravel_pytree(problem.init(jr.key(0)))[1]
    a0_star = float(problem.unnormalised_action(unravel(jnp.asarray(mean)), rf))
    assert out.action0_mean[-1] == pytest.approx(a0_star + mean.size / 2, rel=0.03)
    assert out.rhat["path"][-1].max() < 1.05
    assert set(out.samples) == {5} and out.samples[5]["paths"].shape == (32, 200, 40, 3)
    assert out.unknown_samples[5]["path"].shape == (32, 200, 40, 3)


def test_laplace_bands_on_lorenz96():
    """Bounded forcing whose minimum lies inside the box: the box is not active, so the
    reported θ-std is the unknown's own (no change of variables); every path's Hessian at a
    converged minimum is positive definite, and the bands are finite."""
    problem = small_problem(bounds={"forcing": (4.0, 12.0)})
    schedule = deepest.AnnealSchedule(rf0=0.1, alpha=2.0, n_beta=14)
    result = deepest.anneal(problem, schedule, n_paths=2, key=jr.key(1))
    lap = deepest.laplace(problem, result)
    assert lap.positive_definite.all()
    assert not lap.params_at_bound["forcing"].any()
    np.testing.assert_array_equal(lap.params_std["forcing"], lap.std["params"]["forcing"])
    assert np.all(np.isfinite(lap.params_std["forcing"])) and np.all(lap.params_std["forcing"] > 0)
    gn = deepest.laplace(problem, result, gauss_newton=True)
    # at a good minimum the residuals are small: Gauss–Newton is close to exact
    np.testing.assert_allclose(gn.paths_std, lap.paths_std, rtol=0.2)


def test_laplace_for_training_is_dense_and_exact():
    net = deepest.LayeredNetwork([2, 3, 1], jnp.tanh, key=jr.key(1))
    x = jr.normal(jr.key(2), (6, 2))
    y = jnp.sin(x[:, :1])
    problem = deepest.training(net, x, y, rm=50.0, weight_init="network", state_noise=0.0)
    schedule = deepest.AnnealSchedule(rf0=1.0, alpha=2.0, n_beta=6)
    result = deepest.anneal(problem, schedule, n_paths=2, key=jr.key(0))
    # throw=False: a flat direction of the weights may leave H not positive definite at
    # the one path asked for, which the branch below checks instead of raising
    lap = deepest.laplace(problem, result, paths=0, throw=False)
    u = result.path_unknowns(0)
    y_flat, unravel = ravel_pytree(u)
    hessian = jax.hessian(lambda z: problem.unnormalised_action(unravel(z), result.rf[-1]))(y_flat)
    if lap.positive_definite[0]:
        np.testing.assert_allclose(lap.covariance[0], np.linalg.inv(hessian), rtol=1e-8, atol=1e-12)
        value, std = lap.linearised_std(lambda v: jax.vmap(problem.to_model(v))(x))
        assert value.shape == std.shape == (6, 1) and np.all(std > 0)
    else:
        assert np.min(np.linalg.eigvalsh(hessian)) < 0
    assert set(lap.weights_std) == set(u["weights"])


def test_bad_input():
    problem, schedule, result = _linear_gaussian()
    with pytest.raises(ValueError, match="`rf` must be positive"):
        deepest.laplace(problem, result, rf=0.0)
    with pytest.raises(ValueError, match="`rf` must be positive"):
        deepest.laplace(problem, result, rf=-1.0)
    with pytest.raises(ValueError, match="`paths` must lie in"):
        deepest.laplace(problem, result, paths=[5])
    other = small_problem()
    with pytest.raises(ValueError, match="annealed on another problem"):
        deepest.laplace(other, result)
    with pytest.raises(ValueError, match="do not fit the problem"):
        deepest.laplace(other, result.unknowns, rf=1.0)
    # the same shapes but other data: recognised by the result's record of its problem
    shifted = deepest.Assimilation(
        lambda t, x: jnp.asarray(ROTATION) @ x,
        deepest.Observations(problem.data.times, problem.data.values + 1.0, observed=[0]),
        rm=1 / 0.2**2,
        dim=3,
    )
    with pytest.raises(ValueError, match="annealed on another problem"):
        deepest.laplace(shifted, result)
    with pytest.raises(ValueError, match="`n_chains` must be an integer ≥ 1"):
        deepest.pamc(problem, schedule, n_chains=0, key=jr.key(0))
    with pytest.raises(ValueError, match="`kernel`"):
        deepest.pamc(problem, schedule, n_chains=2, key=jr.key(0), kernel="mala")
    with pytest.raises(ValueError, match="`betas`"):
        deepest.pamc(problem, schedule, n_chains=2, key=jr.key(0), betas=[3, 2])
    with pytest.raises(ValueError, match="`save_betas`"):
        deepest.pamc(problem, schedule, n_chains=2, key=jr.key(0), betas=[5], save_betas=[4])


def test_non_positive_definite_hessian_is_reported_per_path():
    problem, _, result = _linear_gaussian()

    # a negative R_f-like curvature cannot be asked for; a saddle can: flip one path's
    # unknowns far from the data under a prior with negative curvature in one component
    def prior(u):
        return -5e4 * u["path"][20, 1] ** 2 * jnp.where(u["path"][0, 2] > 100.0, 1.0, 0.0)

    unknowns = jax.tree.map(lambda a: np.array(a), result.unknowns)
    unknowns["path"][1, 0, 2] = 200.0
    lap = deepest.laplace(problem, unknowns, rf=result.rf[-1], prior=prior)
    assert lap.positive_definite.tolist() == [True, False]
    assert np.isnan(lap.log_mass[1]) and np.isfinite(lap.log_mass[0])
    assert np.all(np.isfinite(lap.paths_std[0]))


def test_pamc_flags_a_chain_that_turns_non_finite():
    problem, schedule, result = _linear_gaussian()
    unknowns = jax.tree.map(lambda a: np.array(a), result.unknowns)
    unknowns["path"][1, 3, 1] = np.nan
    out = deepest.pamc(
        problem,
        schedule,
        n_chains=4,
        key=jr.key(0),
        n_samples=20,
        n_warmup=20,
        betas=[5],
        init=unknowns,
        kernel="hmc",
    )
    assert out.finite.tolist() == [True, False, True, False]
    assert np.all(np.isfinite(out.mean["path"]))
