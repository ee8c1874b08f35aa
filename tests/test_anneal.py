import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import deepest
import deepest.annealing

from .helpers import ROOT, config_problem, small_problem

SCHEDULE = deepest.AnnealSchedule(1e-3, 2.0, 12)
N_PATHS = 4  # one shape for the small runs, so that they share one compile


@pytest.fixture(scope="module")
def small():
    problem = small_problem()
    result = deepest.anneal(
        problem, SCHEDULE, N_PATHS, jr.key(3), progress=False, save_betas=[0, 11]
    )
    return problem, result


def _rms_unobserved(result, data, path):
    truth = np.asarray(data.truth)
    unobs = [i for i in range(truth.shape[1]) if i not in data.observed]
    est = np.asarray(result.paths)[path, :: result.problem.steps_per_obs]
    return float(np.sqrt(np.mean((est[:, unobs] - truth[:, unobs]) ** 2)))


@pytest.mark.optimised
@pytest.mark.parametrize(
    "minimiser", [deepest.LBFGS(), deepest.LevenbergMarquardt()], ids=["lbfgs", "lm"]
)
def test_twin_L12_every_path_consistent(minimiser):
    problem, schedule, data, _, config = config_problem("lorenz96_L12.yaml")
    n_paths = config["anneal"]["n_paths"]
    assert n_paths >= 16
    result = deepest.anneal(
        problem,
        schedule,
        n_paths,
        jr.key(config["anneal"]["seed"]),
        minimiser=minimiser,
        progress=False,
    )
    meas = result.measurement_error[-1]
    assert np.all((meas > 0.7) & (meas < 1.3)), meas
    for i in range(n_paths):
        assert _rms_unobserved(result, data, i) < 0.15
    assert np.all(np.abs(result.params["forcing"] - 8.17) < 0.1), result.params["forcing"]
    assert result.converged[-1].all()


@pytest.mark.optimised
def test_twin_L8_levels(record_property):
    problem, schedule, data, _, config = config_problem("lorenz96_L8.yaml")
    n_paths = config["anneal"]["n_paths"]
    assert n_paths >= 64
    result = deepest.anneal(
        problem, schedule, n_paths, jr.key(config["anneal"]["seed"]), progress=False
    )
    final = result.action[-1]
    assert result.best == int(np.argmin(final))
    ratio = float(final.max() / final.min())
    within = float(np.mean(final <= 1.05 * final.min()))
    report = {
        "measurement_error_best": float(result.measurement_error[-1, result.best]),
        "largest_over_smallest_final_action": ratio,
        "fraction_within_5_percent": within,
    }
    print(json.dumps(report))
    for key, value in report.items():
        record_property(key, value)
    # Several minima: with 8 of 20 components observed not every path finds the lowest.
    assert ratio > 2


def test_same_key_same_result_and_one_compile(small):
    problem, a = small
    before = eqx.debug.get_num_traces(deepest.annealing.advance_loop)
    b = deepest.anneal(
        small_problem(), SCHEDULE, N_PATHS, jr.key(3), progress=False, save_betas=[0, 11]
    )
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.paths, b.paths)
    other = deepest.AnnealSchedule(5e-3, 1.5, 12)  # new keys and rf values, same shapes
    c = deepest.anneal(problem, other, N_PATHS, jr.key(4), progress=False, save_betas=[0, 11])
    assert not np.array_equal(a.action, c.action)
    # no new trace, so no new compile
    assert eqx.debug.get_num_traces(deepest.annealing.advance_loop) == before


def test_levels_and_iterations_recorded(small):
    problem, result = small
    assert result.action.shape == result.iterations.shape == (12, N_PATHS)
    np.testing.assert_allclose(
        result.action,
        result.measurement_error + result.rf[:, None] * result.model_error,
        rtol=1e-12,
    )
    # the saved minimiser of the last β is the final one
    np.testing.assert_array_equal(result.saved[11]["path"], result.unknowns["path"])
    u0 = jax.tree.map(lambda a: a[2], result.saved[0])
    assert float(problem.action(u0, result.rf[0])) == pytest.approx(result.action[0, 2], rel=1e-12)
    assert (result.iterations >= 1).all()
    assert result.stats["lane_steps"] == result.iterations.sum()
    # lanes run through β at their own pace: the loop is as long as the longest path
    assert result.stats["loop_steps"] == result.iterations.sum(axis=0).max()


class _Poisoned(deepest.AbstractProblem):
    """A problem whose action turns NaN for marked paths once R_f passes a threshold."""

    inner: deepest.Assimilation
    threshold: float

    def init(self, key):
        return {"inner": self.inner.init(key), "poison": jnp.zeros(())}

    def action(self, u, rf):
        poisoned = (u["poison"] > 0.5) & (rf > self.threshold)
        return jnp.where(poisoned, jnp.nan, self.inner.action(u["inner"], rf))

    def measurement_error(self, u):
        return self.inner.measurement_error(u["inner"])

    def model_error(self, u):
        return self.inner.model_error(u["inner"])


def test_non_finite_path_is_flagged_and_others_unchanged():
    problem = _Poisoned(small_problem(), threshold=0.05)
    init = jax.vmap(problem.init)(jr.split(jr.key(0), N_PATHS))
    clean = deepest.anneal(problem, SCHEDULE, N_PATHS, jr.key(0), init=init, progress=False)
    init["poison"] = init["poison"].at[1].set(1.0)
    hit = deepest.anneal(problem, SCHEDULE, N_PATHS, jr.key(0), init=init, progress=False)
    np.testing.assert_array_equal(hit.finite, [True, False, True, True])
    first_bad = int(np.argmax(SCHEDULE.rf > 0.05))
    assert np.isfinite(hit.action[:first_bad, 1]).all()
    assert np.isnan(hit.action[first_bad:, 1]).all()
    assert not hit.converged[first_bad:, 1].any()
    keep = [0, 2, 3]
    np.testing.assert_array_equal(hit.action[:, keep], clean.action[:, keep])
    np.testing.assert_array_equal(
        hit.unknowns["inner"]["path"][keep], clean.unknowns["inner"]["path"][keep]
    )
    assert hit.best != 1


_FLOAT32 = r"""
import json, sys
import jax, jax.numpy as jnp, jax.random as jr, numpy as np, deepest
sys.path.insert(0, sys.argv[1])
assert not jax.config.read("jax_enable_x64")
data = deepest.Observations.load(sys.argv[2])
problem = deepest.Assimilation(deepest.models.Lorenz96(8.0), data, rm=1 / 0.4**2, dim=8,
                               estimate=("forcing",), param_ranges={"forcing": (6.0, 10.0)})
result = deepest.anneal(problem, deepest.AnnealSchedule(1e-3, 2.0, 12), 4, jr.key(3),
                        dtype=jnp.float32, progress=False, save_betas=range(12))
result.save(sys.argv[3])
print(json.dumps({"dtype": str(result.unknowns["path"].dtype),
                  "final": result.action[-1].tolist()}))
"""


def test_float32_run(small, tmp_path):
    # float32 is for speed with x64 off (as on a GPU); here in a process of its own, on the
    # same (float64-made) data.
    small[0].data.save(tmp_path / "data.npz")
    proc = subprocess.run(
        [sys.executable, "-c", _FLOAT32, ROOT, str(tmp_path / "data.npz"), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_ENABLE_X64": "0"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dtype"] == "float32"
    # float32's tolerances: the same minima to about 1e-3, and every level a minimum to
    # 1e-3 relative (a float64 polish of the float32 point).
    np.testing.assert_allclose(out["final"], small[1].action[-1], rtol=1e-3)
    result = deepest.load_result(tmp_path)
    _assert_levels_are_minima(small[0], result, list(range(12)), rtol=1e-3)


def test_save_and_load(tmp_path, small):
    problem, result = small
    result.save(tmp_path)
    with pytest.raises(FileExistsError):
        result.save(tmp_path)
    loaded = deepest.load_result(tmp_path, problem=problem)
    for name in ("rf", "action", "measurement_error", "model_error", "converged", "iterations"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(result, name))
    np.testing.assert_array_equal(loaded.paths, result.paths)
    np.testing.assert_array_equal(loaded.params["forcing"], result.params["forcing"])
    np.testing.assert_array_equal(loaded.saved[0]["path"], result.saved[0]["path"])
    assert loaded.best == result.best
    t, x = loaded.predict(float(problem.ts[-1]) + 0.5)
    assert x.shape == (200, 8) and np.isfinite(x).all()


def test_views_are_properties(small):
    _, result = small
    assert result.paths is result.views["paths"]
    assert result.params is result.views["params"]
    # a view the problem does not have is an AttributeError that names the ones it has
    with pytest.raises(AttributeError, match="paths"):
        _ = result.train_error


def test_old_result_folder_loads(tmp_path, small):
    # A result folder of the layout `save_result` wrote before results owned their files,
    # from before stop reasons were recorded (`converged` instead), still loads.
    problem, result = small
    arrays = {k: getattr(result, k) for k in ("rf", "action", "measurement_error")}
    arrays.update(model_error=result.model_error, iterations=result.iterations)
    arrays.update(converged=result.converged)
    arrays["unknowns/path"] = result.unknowns["path"]
    arrays["unknowns/params/forcing"] = result.unknowns["params"]["forcing"]
    arrays["views/paths"] = result.paths
    arrays["saved/0/path"] = result.saved[0]["path"]
    arrays["meta"] = np.asarray(json.dumps({"stats": {}, "expected_action": None}))
    np.savez(tmp_path / "result.npz", **arrays)
    loaded = deepest.load_result(tmp_path, problem=problem)
    np.testing.assert_array_equal(loaded.converged, result.converged)
    np.testing.assert_array_equal(loaded.action, result.action)
    np.testing.assert_array_equal(loaded.saved[0]["path"], result.saved[0]["path"])
    assert loaded.stop_reasons()["nonlinear_max_steps_reached"] == int(np.sum(~result.converged))


def test_progress_meter_component(small):
    # `progress=False` is `NoProgressMeter()`: the same program (no new trace), the same run.
    problem, a = small
    before = eqx.debug.get_num_traces(deepest.annealing.advance_loop)
    b = deepest.anneal(
        problem,
        SCHEDULE,
        N_PATHS,
        jr.key(3),
        progress=deepest.annealing.NoProgressMeter(),
        save_betas=[0, 11],
    )
    np.testing.assert_array_equal(a.action, b.action)
    assert eqx.debug.get_num_traces(deepest.annealing.advance_loop) == before


def test_predict_continues_the_truth(small):
    problem, result = small
    times, x = result.predict(float(problem.ts[-1]) + 0.2, n_times=5)
    np.testing.assert_allclose(x[0], result.paths[result.best, -1], rtol=0, atol=1e-12)
    truth = deepest.integrate(deepest.models.Lorenz96(8.17), problem.data.truth[-1], times)
    # an estimate within the data noise stays near the truth over a short horizon
    assert np.sqrt(np.mean((np.asarray(x) - np.asarray(truth)) ** 2)) < 1.0


@pytest.mark.parametrize(
    "args, match",
    [
        ((0.0, 2.0, 10), "rf0"),
        ((-1.0, 2.0, 10), "rf0"),
        ((1e-3, 1.0, 10), "alpha"),
        ((1e-3, 0.5, 10), "alpha"),
        ((1e-3, 2.0, 0), "n_beta"),
    ],
)
def test_bad_schedule(args, match):
    with pytest.raises(ValueError, match=match):
        deepest.AnnealSchedule(*args)


def test_bad_anneal_arguments():
    problem = small_problem()
    with pytest.raises(ValueError, match="n_paths"):
        deepest.anneal(problem, SCHEDULE, 0, jr.key(0))
    with pytest.raises(ValueError, match="save_betas"):
        deepest.anneal(problem, SCHEDULE, 2, jr.key(0), save_betas=[12])
    with pytest.raises(ValueError, match="rf0"):
        deepest.anneal(problem, deepest.AnnealSchedule(np.ones(3), 2.0, 3), 2, jr.key(0))


_SHARDED = r"""
import json, sys
import equinox as eqx
import jax
jax.config.update("jax_enable_x64", True)
import jax.random as jr, numpy as np, deepest
sys.path.insert(0, sys.argv[1])
from tests.helpers import small_problem
assert len(jax.devices()) == 4
problem = small_problem()
schedule = deepest.AnnealSchedule(1e-3, 2.0, 10)
out = {}
# 6 paths: not a multiple of the devices. Levenberg–Marquardt with 48 lanes per device and
# 20 × 20 blocks: jaxlib spreads a batched LAPACK call this large over its thread pool, which
# deadlocked in a sharded program (the banded solve now uses no LAPACK).
wide = small_problem(dim=20, n_times=11)
# Three β and a few steps suffice for that.
for n, minimiser in ((8, None), (6, None), (192, deepest.LevenbergMarquardt())):
    problem = wide if minimiser else problem
    kwargs = dict(progress=False, minimiser=minimiser, max_evaluations=6 if minimiser else 5000)
    sched = deepest.AnnealSchedule(1e-3, 2.0, 3) if minimiser else schedule
    many = deepest.anneal(problem, sched, n, jr.key(2), **kwargs)
    one = deepest.anneal(problem, sched, n, jr.key(2), devices=jax.devices()[:1], **kwargs)
    out[n] = {"rel": float(np.max(np.abs(many.action[-1] / one.action[-1] - 1))),
              "same_converged": bool(np.array_equal(many.converged, one.converged)),
              "n_devices": many.stats["n_devices"], "shape": list(many.action.shape)}
# A sweep's points split over the devices: 3 points on 4 devices (one padded twice).
points = [small_problem(n_times=n) for n in (21, 21, 21)]
scheds = [deepest.AnnealSchedule(rf0, 2.0, 6) for rf0 in (1e-3, 1e-2, 1e-1)]
many = deepest.sweep(points, scheds, 3, jr.key(2), progress=False)
one = deepest.sweep(points, scheds, 3, jr.key(2), progress=False, devices=jax.devices()[:1])
pairs = list(zip(many, one))
out["sweep"] = {"rel": max(float(np.max(np.abs(a.action / b.action - 1))) for a, b in pairs),
                "same_converged": all(np.array_equal(a.converged, b.converged) for a, b in pairs),
                "n_devices": many[0].stats["n_devices"], "shape": list(many[2].action.shape)}
try:  # one group per device: a group size is for runs on one device
    deepest.anneal(problem, schedule, 8, jr.key(2), progress=False, group_size=2)
    out["group_size"] = "accepted"
except ValueError as e:
    out["group_size"] = str(e)
print(json.dumps(out))
"""


def test_sharded_over_four_devices_matches_one():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED, ROOT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "`group_size` cuts a run on one device" in out.pop("group_size")
    for n, row in out.items():
        assert row["n_devices"] == 4
        shapes = {"192": [3, 192], "sweep": [6, 3]}
        assert row["shape"] == shapes.get(n, [10, int(n) if n.isdigit() else 0])
        assert row["rel"] < 1e-8, row
        assert row["same_converged"], row


def test_float64_without_x64_is_an_error():
    code = (
        "import jax.random as jr, deepest\n"
        "data = deepest.Observations([0., .1, .2], [[0.], [1.], [2.]], [0])\n"
        "p = deepest.Assimilation(deepest.models.Lorenz96(), data, rm=1., dim=5)\n"
        "deepest.anneal(p, deepest.AnnealSchedule(1., 2., 2), 2, jr.key(0))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_ENABLE_X64": "0"},
        timeout=300,
    )
    assert proc.returncode != 0
    assert "jax_enable_x64" in proc.stderr


def test_plots(small):
    import matplotlib

    matplotlib.use("Agg")
    problem, result = small
    ax = deepest.plot_action_levels(result)
    assert len(ax.lines) == N_PATHS + 1  # one per path, and the expected level
    assert ax.get_yscale() == "log"
    axes = deepest.plot_estimates(result, problem.data, forecast=float(problem.ts[-1]) + 0.3)
    assert len(axes) == 2


# -- levels that are minima, stop reasons, init (the "annealing you can trust" issue) ---


def _polish_gaps(problem, result, betas):
    """(A_reported − A_polished)/|A_polished| at each converged (β, path) after a tight
    scipy L-BFGS-B polish (gtol 1e-13, ftol 1e-15) from the reported point, in float64."""
    import scipy.optimize
    from jax.flatten_util import ravel_pytree

    problem = jax.tree.map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, problem
    )
    _, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], result.unknowns))
    value_and_grad = jax.jit(jax.value_and_grad(lambda y, rf: problem.action(unravel(y), rf)))

    def fg(y, rf):
        f, g = value_and_grad(y, rf)
        return float(f), np.asarray(g, dtype=np.float64)

    gaps = np.full((len(betas), result.n_paths), np.nan)
    for i, b in enumerate(betas):
        rf = jnp.asarray(result.rf[b], jnp.float64)
        for p in np.flatnonzero(result.converged[b]):
            u = jax.tree.map(lambda a, p=p: np.asarray(a[p], np.float64), result.saved[b])
            y = np.asarray(ravel_pytree(u)[0])
            f0 = fg(y, rf)[0]
            polished = scipy.optimize.minimize(
                fg,
                y,
                args=(rf,),
                jac=True,
                method="L-BFGS-B",
                options={"gtol": 1e-13, "ftol": 1e-15, "maxiter": 20000, "maxfun": 40000},
            )
            gaps[i, p] = (f0 - polished.fun) / abs(polished.fun)
    return gaps


def _assert_levels_are_minima(problem, result, betas, rtol):
    gaps = _polish_gaps(problem, result, betas)
    print(f"worst polish gap {np.nanmax(gaps):.2e}; stop reasons {result.stop_reasons()}")
    assert result.converged.all(), result.stop_reasons()
    assert np.nanmax(gaps) <= rtol, gaps
    # A minimum's level cannot fall as R_f rises along the continuation (SCIENCE.md).
    rise = np.diff(result.action, axis=0) / np.abs(result.action[1:])
    assert rise.min() >= -1e-9, rise.min()


POLISH_SCHEDULE = deepest.AnnealSchedule(1e-3, 3.0, 8)


# L-BFGS on every discretisation; Levenberg–Marquardt on one without and one with interval
# unknowns (its other three were checked alike when it was written; each case is a compile
# of ~7 s, and CI has 25 minutes).
@pytest.mark.parametrize(
    "discretisation, minimiser",
    [
        (d, deepest.LBFGS())
        for d in ("euler", "trapezoid", "rk4", "simpson_hermite", "gauss_legendre")
    ]
    + [(d, deepest.LevenbergMarquardt()) for d in ("trapezoid", "gauss_legendre")],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_every_level_is_a_minimum(discretisation, minimiser):
    # Rates 1e-3·3^β reach R_f ≈ 2: the low β where the old rule stalled and the high β
    # where the action is ~100× larger.
    problem = small_problem(discretisation, n_times=13)
    betas = list(range(POLISH_SCHEDULE.n_beta))
    result = deepest.anneal(
        problem,
        POLISH_SCHEDULE,
        1,
        jr.key(1),
        minimiser=minimiser,
        save_betas=betas,
        progress=False,
    )
    _assert_levels_are_minima(problem, result, betas, rtol=1e-6)


def test_every_training_level_is_a_minimum():
    # One tanh layer, noisy targets: a well-posed minimum. (Hidden layers bring flat
    # directions, weight-space symmetries with Hessian eigenvalues ~1e-16 of the largest,
    # where L-BFGS, scipy's too, needs ~10⁴ evaluations: such levels stop at max_evaluations and
    # are reported so.)
    net = deepest.LayeredNetwork([2, 1], jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (10, 2))
    y = jnp.tanh(x[:, :1] - 0.5 * x[:, 1:]) + 0.3 * jr.normal(jr.key(3), (10, 1))
    problem = deepest.training(net, x, y, rm=10.0)
    schedule = deepest.AnnealSchedule(1.0, 3.0, 6)
    betas = list(range(schedule.n_beta))
    result = deepest.anneal(problem, schedule, 2, jr.key(2), save_betas=betas, progress=False)
    _assert_levels_are_minima(problem, result, betas, rtol=1e-6)


@eqx.filter_jit
def _newton_polished(problem, template, ys, rf):
    """The action after three Newton steps on the dense Hessian (169 unknowns) from each
    flat point in `ys`: from a point within the stopping rule they reach the minimum to
    rounding (measured: max|∇A| ~ 1e-16 after them)."""
    unravel = ravel_pytree(template)[1]
    action = lambda y: problem.action(unravel(y), rf)

    def polish(y):
        for _ in range(3):
            y = y - jnp.linalg.solve(jax.hessian(action)(y), jax.grad(action)(y))
        return action(y)

    return jax.vmap(polish)(ys)


def test_carried_curvature_reaches_the_cold_start_minima(small):
    problem, cold = small
    warm = deepest.anneal(
        problem,
        SCHEDULE,
        N_PATHS,
        jr.key(3),
        minimiser=deepest.LBFGS(carry_curvature=True),
        progress=False,
        save_betas=[0, 11],
    )
    assert warm.converged.all()
    template = jax.tree.map(lambda a: a[0], cold.unknowns)
    for beta in (0, 11):
        flat = lambda r, beta=beta: jax.vmap(lambda u: ravel_pytree(u)[0])(r.saved[beta])
        ys = jnp.concatenate([flat(warm), flat(cold)])
        both = np.asarray(_newton_polished(problem, template, ys, jnp.asarray(cold.rf[beta])))
        polished = both[:N_PATHS]
        # One minimum: the Newton-polished levels of both routes agree to rounding (measured
        # 2e-16); a different minimum differs by ≫ 1e-12.
        np.testing.assert_allclose(polished, both[N_PATHS:], rtol=1e-12)
        # Each reported level lies above that minimum by its stopping gap. Carrying curvature
        # runs L-BFGS unpreconditioned, whose model underestimates what is left: at β = 0
        # (A ≈ 1e-4) it stops 1.35e-6 above (measured; 1.1e-6 on an AMD EPYC), against
        # ≤ 1e-10 for the cold start. 2e-5 leaves ×15; a level stopped short is ≫ that.
        gap = (warm.action[beta] - polished) / polished
        assert (gap >= -1e-12).all() and (gap <= 2e-5).all(), gap
    # So the two routes' levels agree to within the warm route's gap at every β.
    np.testing.assert_allclose(warm.action, cold.action, rtol=2e-5)


def test_stop_reasons(small):
    problem, good = small
    short = deepest.anneal(problem, SCHEDULE, 2, jr.key(0), max_evaluations=3, progress=False)
    # three evaluations cannot minimise a fresh β: every level is out of steps
    assert (short.result == deepest.RESULTS.nonlinear_max_steps_reached).all()
    assert not short.converged.any() and (short.converged_by == "").all()
    assert short.stop_reasons()["nonlinear_max_steps_reached"] == SCHEDULE.n_beta * 2
    assert (short.iterations == 3).all()
    assert (good.result == deepest.RESULTS.successful).all() and good.converged.all()
    assert np.isin(good.converged_by, ["decrease", "gradient"]).all()
    assert good.summary()["stop_reasons"]["converged_decrease"] > 0
    poisoned = _Poisoned(problem, threshold=0.05)
    init = jax.vmap(poisoned.init)(jr.split(jr.key(0), 2))
    init["poison"] = init["poison"].at[0].set(1.0)
    hit = deepest.anneal(poisoned, SCHEDULE, 2, init=init, progress=False)
    first_bad = int(np.argmax(SCHEDULE.rf > 0.05))
    assert (hit.result == deepest.RESULTS.nonfinite)[first_bad, 0]
    assert (hit.result == deepest.RESULTS.not_reached)[first_bad + 1 :, 0].all()
    assert hit.converged[:, 1].all()


def test_all_paths_non_finite_raises():
    poisoned = _Poisoned(small_problem(), threshold=0.05)
    init = jax.vmap(poisoned.init)(jr.split(jr.key(0), 2))
    init["poison"] = jnp.ones(2)
    with pytest.raises(RuntimeError, match="non-finite"):
        deepest.anneal(poisoned, SCHEDULE, 2, init=init, progress=False)
    result = deepest.anneal(poisoned, SCHEDULE, 2, init=init, progress=False, throw=False)
    assert not result.finite.any()


def test_init_is_checked_leaf_by_leaf():
    problem = small_problem()
    init = jax.vmap(problem.init)(jr.split(jr.key(0), 2))
    # (paths, D, N) for (paths, N, D): same size, wrong shape
    swapped = {**init, "path": jnp.swapaxes(init["path"], 1, 2)}
    with pytest.raises(ValueError, match=r"init\['path'\].*\(2, 21, 8\)"):
        deepest.anneal(problem, SCHEDULE, 2, init=swapped, progress=False)
    with pytest.raises(ValueError, match=r"init\['params'\]\['forcing'\]"):
        deepest.anneal(
            problem, SCHEDULE, 2, init={**init, "params": {"forcing": jnp.ones(3)}}, progress=False
        )
    with pytest.raises(ValueError, match="structure"):
        deepest.anneal(problem, SCHEDULE, 2, init={"path": init["path"]}, progress=False)
    with pytest.raises(ValueError, match="key"):
        deepest.anneal(problem, SCHEDULE, 2, progress=False)
