"""Uncertainty at an active bound: the Laplace approximation holds the unknowns on a bound
there (the Gaussian of the rest given them, against the dense conditional of a
linear-Gaussian problem whose constrained minimiser scipy's BVLS finds), says so and cuts
its bands at the box; precision annealing Monte Carlo samples the posterior cut to the box
(against the truncated normal's closed form)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.stats
from jax.flatten_util import ravel_pytree

import deepest

RATES = np.array([[-0.2, 1.0], [-1.0, -0.2]])
RF = 500.0


def _field(t, x, p):
    return jnp.asarray(RATES) @ x + jnp.stack([p["forcing"], jnp.zeros_like(p["forcing"])])


def _problem(**boxes):
    """A damped rotation pushed by a constant `forcing` on component 0, D = 2, 12
    observations of component 0, trapezoid rule: the residuals are affine in the path and
    the forcing, so A₀ = ½|J·y + r₀|² exactly and its posterior is Gaussian."""
    times = np.linspace(0.0, 3.0, 12)
    truth = scipy.integrate.solve_ivp(
        lambda t, x: RATES @ x + [0.5, 0.0], (0, 3), [1.0, 0.0], t_eval=times, rtol=1e-10
    ).y.T
    noise = np.random.default_rng(1).normal(size=(12, 1))
    data = deepest.Observations(times, truth[:, [0]] + 0.1 * noise, observed=[0], noise=0.1)
    return deepest.Assimilation(
        _field, data, rm=1 / 0.1**2, dim=2, params={"forcing": 0.5}, estimate=("forcing",), **boxes
    )


def _affine(problem):
    """(J, r₀, unravel) with A₀(y) = ½|J·y + r₀|² at R_f = RF, y the flat unknowns."""
    y0, unravel = ravel_pytree(problem.init(jr.key(0)))

    def residuals(y):
        states, params = problem.to_banded(unravel(y))
        node, interval = problem.unnormalised_banded_residuals(states, params, RF)
        return jnp.concatenate([node.ravel(), interval.ravel()])

    zero = jnp.zeros_like(y0)
    return np.asarray(jax.jacfwd(residuals)(zero)), np.asarray(residuals(zero)), unravel


@functools.cache
def _posterior():
    """The unbounded posterior N(mean, cov) and the flat index of the forcing."""
    jac, r0, unravel = _affine(_problem())
    hessian = jac.T @ jac
    mean = np.linalg.solve(hessian, -jac.T @ r0)
    index = int(unravel(jnp.arange(mean.size, dtype=float))["params"]["forcing"])
    return mean, np.linalg.inv(hessian), index


@functools.cache
def _constrained():
    """The forcing's upper bound one posterior σ below its mean, component 1 below 0.1:
    both bind. The constrained minimiser (scipy's bounded-variable least squares, an
    active-set method exact to rounding) and the Laplace result at it (path 0) and at it
    with its free unknowns moved (path 1: the conditioned Newton step must come back)."""
    mean, cov, k = _posterior()
    high = float(mean[k] - np.sqrt(cov[k, k]))
    problem = _problem(
        bounds={"forcing": (-np.inf, high)},
        param_ranges={"forcing": (high - 1.0, high)},
        state_bounds=[None, (-np.inf, 0.1)],
    )
    jac, r0, unravel = _affine(problem)
    lower, upper = (np.asarray(ravel_pytree(side)[0]) for side in problem.bounds())
    fit = scipy.optimize.lsq_linear(jac, -r0, bounds=(lower, upper), method="bvls", tol=1e-14)
    x, active = fit.x, fit.active_mask != 0
    assert active[k] and active.sum() >= 2  # the forcing and some states bind
    np.testing.assert_array_equal(x[active], np.where(fit.active_mask > 0, upper, lower)[active])
    inside = ~active & (x - lower > 0.05) & (upper - x > 0.05)
    moved = x + np.where(inside, 0.01 * np.random.default_rng(2).normal(size=x.size), 0.0)
    unknowns = jax.vmap(unravel)(jnp.asarray(np.stack([x, moved])))
    lap = deepest.laplace(problem, unknowns, rf=RF)
    return problem, lap, jac, r0, fit, high


def _flat(tree, i):
    return np.asarray(ravel_pytree(jax.tree.map(lambda a: jnp.asarray(a[i]), tree))[0])


def test_laplace_holds_the_active_bounds_and_conditions_the_rest():
    problem, lap, jac, r0, fit, high = _constrained()
    _, _, k = _posterior()
    x, active = fit.x, fit.active_mask != 0
    free = ~active
    hessian = jac.T @ jac
    conditional = np.linalg.inv(hessian[np.ix_(free, free)])
    variance = np.zeros(x.size)
    variance[free] = np.diag(conditional)
    assert lap.positive_definite.all()
    assert lap.params_at_bound["forcing"].tolist() == [True, True]
    assert lap.states_at_bound.tolist() == [active.sum() - 1] * 2
    for i in range(2):
        np.testing.assert_array_equal(_flat(lap.at_bound, i), active)
        # the Newton step of the free unknowns lands on the constrained minimiser
        np.testing.assert_allclose(_flat(lap.unknowns, i), x, rtol=0, atol=1e-10)
        np.testing.assert_allclose(_flat(lap.std, i) ** 2, variance, rtol=1e-9, atol=0)
    assert _flat(lap.unknowns, 0)[k] == high  # exactly on the bound
    assert lap.params_std["forcing"].tolist() == [0.0, 0.0]
    # the forecast's end covariance holds the forcing (the last banded slot) too
    np.testing.assert_array_equal(lap.end_covariance[:, -1], 0.0)
    residual = jac @ x + r0
    np.testing.assert_allclose(lap.action0, 0.5 * residual @ residual, rtol=1e-11)
    log_det = np.linalg.slogdet(hessian[np.ix_(free, free)])[1]
    np.testing.assert_allclose(lap.log_det, log_det, rtol=1e-11)
    # log mass: the conditional Gaussian's, and for each bound its layer's width
    # ∫₀^∞ exp(−g·t − ½H_aa·t²) dt, g the gradient into the box (here > 0: both press)
    inward = -fit.active_mask * (jac.T @ residual)
    assert np.all(inward[active] > 0)
    layers = [
        scipy.integrate.quad(lambda t, g=g, h=h: np.exp(-g * t - 0.5 * h * t * t), 0, np.inf)[0]
        for g, h in zip(inward[active], np.diag(hessian)[active], strict=True)
    ]
    expected = (
        -0.5 * residual @ residual
        - 0.5 * log_det
        + 0.5 * free.sum() * np.log(2 * np.pi)
        + np.sum(np.log(layers))
    )
    np.testing.assert_allclose(lap.log_mass, expected, rtol=1e-9)


def test_laplace_says_which_parameter_lies_on_its_bound():
    _, lap, _, _, fit, high = _constrained()
    lines = lap.warnings(best=0)
    assert len(lines) == 2
    assert lines[0].startswith(
        f"parameter 'forcing' of the best path 0 lies on its upper bound {high:g} "
        "(2 of 2 paths have it on a bound): the posterior is cut by the bound there, so the "
        "Gaussian of A₀'s curvature is one-sided: its ±2σ band reaches outside the box."
    )
    assert "holds it on the bound (std 0)" in lines[0] and "deepest.pamc" in lines[0]
    n_states = int(np.sum(fit.active_mask != 0)) - 1
    assert lines[1].startswith(f"{n_states} state entries of the best path 0 lie on a bound")
    # nothing on a bound, nothing said: the unbounded problem at its own minimum
    mean, _, _ = _posterior()
    problem = _problem()
    _, unravel = ravel_pytree(problem.init(jr.key(0)))
    free = deepest.laplace(problem, jax.tree.map(lambda a: a[None], unravel(mean)), rf=RF)
    assert free.warnings() == [] and free.states_at_bound.tolist() == [0]
    assert free.params_at_bound["forcing"].tolist() == [False]


def test_laplace_intervals_are_cut_at_the_box():
    _, lap, _, _, _, high = _constrained()
    paths, paths_std, params = lap.bands(0)
    low, top, cut = lap.intervals(0, width=6.0)
    # the uncut ±6σ band of component 1 crosses its bound 0.1 after the first time (held
    # on it there); the cut one does not
    assert paths[0, 1] == 0.1 and paths_std[0, 1] == 0.0
    assert np.any(paths[:, 1] + 6 * paths_std[:, 1] > 0.1)
    assert np.all(top[:, 1] <= 0.1) and np.all(low <= paths) and np.all(paths <= top)
    np.testing.assert_array_equal(top[:, 0], paths[:, 0] + 6 * paths_std[:, 0])  # no bound
    np.testing.assert_array_equal(np.minimum(paths[:, 1] + 6 * paths_std[:, 1], 0.1), top[:, 1])
    assert cut["forcing"] == (high, high) and params["forcing"] == (high, 0.0)


def test_laplace_at_bound_is_saved_and_older_files_load(tmp_path):
    problem, lap, *_ = _constrained()
    file = lap.save(tmp_path / "new")
    loaded = deepest.LaplaceResult.load(file, problem)
    for a, b in zip(jax.tree.leaves(lap.at_bound), jax.tree.leaves(loaded.at_bound), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.params_at_bound["forcing"].tolist() == [True, True]
    assert loaded.warnings(best=0) == lap.warnings(best=0)
    # a file of the version before bounds: no `at_bound`, no views of it
    with np.load(file) as f:
        arrays = dict(f)
    meta = json.loads(str(arrays.pop("meta")))
    del meta["kinds"]["at_bound"]
    arrays = {k: v for k, v in arrays.items() if "at_bound" not in k}
    arrays["meta"] = np.asarray(json.dumps(meta))
    os.makedirs(tmp_path / "old")
    np.savez(tmp_path / "old" / "laplace.npz", **arrays)
    old = deepest.LaplaceResult.load(tmp_path / "old", problem)
    assert old.at_bound is None and old.params_at_bound["forcing"].tolist() == [False, False]
    assert old.states_at_bound.tolist() == [0, 0] and old.warnings(best=0) == []
    np.testing.assert_array_equal(old.params_std["forcing"], lap.params_std["forcing"])


MEAN = np.array([0.3, -0.5])
COVARIANCE = np.array([[1.0, 0.6], [0.6, 2.0]])
LOW = 0.8


class _CutGaussian(deepest.AbstractProblem):
    """x ~ N(MEAN, COVARIANCE) cut to x₀ ≥ LOW: A₀ = ½(x − m)ᵀΣ⁻¹(x − m) in the box."""

    def init(self, key):
        low, high = jnp.asarray([LOW, -1.0]), jnp.asarray([LOW + 1.0, 1.0])
        return {"x": jr.uniform(key, (2,), low.dtype, low, high)}

    def residual_blocks(self):
        whiten = jnp.asarray(np.linalg.cholesky(np.linalg.inv(COVARIANCE)).T)
        return (
            deepest.annealing.Block(lambda u: whiten @ (u["x"] - jnp.asarray(MEAN)), 2),
            deepest.annealing.Block(lambda u: u["x"][:0], 1, term="model"),
        )

    def bounds(self):
        return {"x": jnp.asarray([LOW, -jnp.inf])}, {"x": jnp.asarray([jnp.inf, jnp.inf])}


def test_pamc_samples_a_gaussian_cut_by_a_bound():
    problem = _CutGaussian()
    schedule = deepest.AnnealSchedule(rf0=1.0, alpha=2.0, n_beta=1)
    out = deepest.pamc(problem, schedule, n_chains=8, key=jr.key(1), n_samples=300, n_warmup=150)
    draws = out.unknown_samples[0]["x"].reshape(-1, 2)
    assert out.finite.all() and np.all(draws[:, 0] >= LOW)
    # x₀ is a truncated normal; x₁ | x₀ is the Gaussian's conditional, unchanged by the cut
    s0 = np.sqrt(COVARIANCE[0, 0])
    cut = scipy.stats.truncnorm((LOW - MEAN[0]) / s0, np.inf, loc=MEAN[0], scale=s0)
    slope = COVARIANCE[1, 0] / COVARIANCE[0, 0]
    mean = [cut.mean(), MEAN[1] + slope * (cut.mean() - MEAN[0])]
    var = [cut.var(), COVARIANCE[1, 1] - slope * COVARIANCE[1, 0] + slope**2 * cut.var()]
    # within 4 Monte Carlo standard errors (from the ESS, ≳ 200 here); the variances of
    # that many effective draws within ~ 2·√(2/200) = 20%
    np.testing.assert_array_less(np.abs(out.mean["x"][-1] - mean), 4 * out.mc_error["x"][-1])
    np.testing.assert_allclose(out.std["x"][-1] ** 2, var, rtol=0.25)


def test_pamc_of_an_assimilation_samples_its_bounded_parameter_cut():
    """The forcing bounded below 0.3σ above its posterior mean: its marginal is the
    Gaussian marginal cut there. Chains start at the constrained minimum, on the bound, and
    sample in whitened coordinates."""
    mean, cov, k = _posterior()
    sd = np.sqrt(cov[k, k])
    low = float(mean[k] + 0.3 * sd)
    problem = _problem(bounds={"forcing": (low, np.inf)}, param_ranges={"forcing": (low, low + 1)})
    jac, r0, unravel = _affine(problem)
    lower, upper = (np.asarray(ravel_pytree(side)[0]) for side in problem.bounds())
    x = scipy.optimize.lsq_linear(jac, -r0, bounds=(lower, upper), method="bvls", tol=1e-14).x
    assert x[k] == low
    out = deepest.pamc(
        problem,
        deepest.AnnealSchedule(rf0=RF, alpha=2.0, n_beta=1),
        n_chains=8,
        key=jr.key(2),
        n_samples=300,
        n_warmup=150,
        init=jax.tree.map(lambda a: a[None], unravel(jnp.asarray(x))),
    )
    forcing = out.unknown_samples[0]["params"]["forcing"]
    assert out.finite.all() and np.all(forcing >= low)
    assert np.all(out.samples[0]["params"]["forcing"] >= low)
    cut = scipy.stats.truncnorm((low - mean[k]) / sd, np.inf, loc=mean[k], scale=sd)
    got, se = out.mean["params"]["forcing"][-1], out.mc_error["params"]["forcing"][-1]
    assert abs(got - cut.mean()) < 4 * se
    assert out.std["params"]["forcing"][-1] ** 2 == pytest.approx(cut.var(), rel=0.25)
    # the cut posterior's mean − 2σ lies below the bound; its band stops there
    std = out.std["params"]["forcing"][-1]
    assert got - 2 * std < low
    band = out.intervals()[2]["forcing"]
    assert band[0] == low and band[1] == pytest.approx(got + 2 * std, rel=1e-12)
