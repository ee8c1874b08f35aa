"""One failure contract and results that own their files: `deepest.RESULTS` codes and
`throw` in every entry point, `save`/`load` of every result, and the one atomic writer."""

import dataclasses
import functools
import json
import os
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest

from .helpers import small_problem

SCHEDULE = deepest.AnnealSchedule(1e-3, 2.0, 8)
THRESHOLD = 0.05  # R_f above which `_NaNAbove` turns non-finite
FIRST_BAD = int(np.argmax(SCHEDULE.rf > THRESHOLD))


class _NaNAbove(deepest.AbstractProblem):
    """An assimilation whose action is NaN at every point once R_f passes `threshold`:
    every path turns non-finite at the same β."""

    inner: deepest.Assimilation
    threshold: jax.Array

    def init(self, key):
        return self.inner.init(key)

    def action(self, u, rf):
        return jnp.where(rf > self.threshold, jnp.nan, self.inner.action(u, rf))

    def measurement_error(self, u):
        return self.inner.measurement_error(u)

    def model_error(self, u):
        return self.inner.model_error(u)


@functools.cache
def _tiny():
    return small_problem(n_times=11, dim=4)


def _nan_above(threshold):
    return _NaNAbove(_tiny(), jnp.asarray(threshold))


# -- RESULTS and its deprecated aliases ----------------------------------------------------


def test_results_extends_optimistix_and_the_old_names_warn():
    import optimistix as optx

    assert issubclass(deepest.RESULTS, optx.RESULTS)
    # optimistix's codes promote into deepest's: a root-find result compares with ours
    promoted = deepest.RESULTS.promote(optx.RESULTS.nonlinear_max_steps_reached)
    assert promoted == deepest.RESULTS.nonlinear_max_steps_reached
    for name in ("stalled", "not_reached", "not_positive_definite", "max_nodes_reached"):
        assert deepest.RESULTS[getattr(deepest.RESULTS, name)]  # each has its message
    with pytest.warns(DeprecationWarning, match="RESULTS"):
        assert deepest.TPBVPResults is deepest.RESULTS
    with pytest.warns(DeprecationWarning, match="StopReason"):
        assert deepest.StopReason.max_steps == 3


# -- throw: raises when nothing is usable, else codes ----------------------------------------


def test_anneal_throw_raises_or_returns_codes():
    problem = _nan_above(THRESHOLD)
    with pytest.raises(eqx.EquinoxRuntimeError, match="every path turned non-finite"):
        deepest.anneal(problem, SCHEDULE, 2, jr.key(0), progress=False)
    result = deepest.anneal(problem, SCHEDULE, 2, jr.key(0), progress=False, throw=False)
    codes = result.result
    assert (codes == deepest.RESULTS.successful)[:FIRST_BAD].all()
    assert (codes == deepest.RESULTS.nonfinite)[FIRST_BAD].all()
    assert (codes == deepest.RESULTS.not_reached)[FIRST_BAD + 1 :].all()
    assert np.isin(result.converged_by[:FIRST_BAD], ["decrease", "gradient"]).all()
    assert (result.converged_by[FIRST_BAD:] == "").all()
    assert not result.finite.any()
    assert (result.path_result == deepest.RESULTS.nonfinite).all()
    # the deprecated codes still read, with a warning
    with pytest.warns(DeprecationWarning):
        old = result.stop_reason
    assert (old[FIRST_BAD] == 5).all() and np.isin(old[:FIRST_BAD], [1, 2]).all()


def test_sweep_throw_raises_or_returns_codes():
    points = [_nan_above(np.inf), _nan_above(THRESHOLD)]
    with pytest.raises(eqx.EquinoxRuntimeError, match="sweep, point 1"):
        deepest.sweep(points, SCHEDULE, 2, jr.key(0), progress=False)
    results = deepest.sweep(points, SCHEDULE, 2, jr.key(0), progress=False, throw=False)
    assert isinstance(results, deepest.SweepResult) and len(results) == 2
    assert results[0].finite.all() and results[0].converged.all()
    assert not results[1].finite.any()
    assert (results[1].result == deepest.RESULTS.nonfinite)[FIRST_BAD].all()


def _unknowns(problem, n=2):
    return jax.vmap(problem.init)(jr.split(jr.key(1), n))


def test_laplace_throw_raises_or_returns_codes():
    problem = _tiny()
    unknowns = _unknowns(problem)

    def saddle(u):  # a prior of negative curvature in the forcing: H indefinite everywhere
        return -1e8 * jnp.sum(u["params"]["forcing"] ** 2)

    with pytest.raises(eqx.EquinoxRuntimeError, match="not positive definite"):
        deepest.laplace(problem, unknowns, rf=1.0, prior=saddle)
    lap = deepest.laplace(problem, unknowns, rf=1.0, prior=saddle, throw=False)
    assert (lap.result == deepest.RESULTS.not_positive_definite).all()
    assert not lap.positive_definite.any() and np.isnan(lap.log_mass).all()
    # JᵀJ with a proper prior is positive definite: nothing raised, codes successful
    ok = deepest.laplace(
        problem,
        unknowns,
        rf=1.0,
        gauss_newton=True,
        prior=lambda u: 0.5 * jnp.sum(u["params"]["forcing"] ** 2),
    )
    assert (ok.result == deepest.RESULTS.successful).all() and ok.positive_definite.all()


def _pamc(problem, init, **kwargs):
    return deepest.pamc(
        problem,
        SCHEDULE,
        n_chains=2,
        key=jr.key(0),
        n_samples=4,
        n_warmup=4,
        betas=[0, 1],
        init=init,
        kernel="hmc",
        num_integration_steps=2,
        precondition=False,
        **kwargs,
    )


def test_pamc_throw_raises_or_returns_codes():
    problem = _tiny()
    poisoned = jax.tree.map(lambda a: np.array(a), _unknowns(problem))
    poisoned["path"][:, 2, 1] = np.nan  # every chain starts non-finite
    with pytest.raises(eqx.EquinoxRuntimeError, match="every chain failed at β = 0"):
        _pamc(problem, poisoned)
    out = _pamc(problem, poisoned, throw=False)
    assert (out.result == deepest.RESULTS.nonfinite).all() and not out.finite.any()
    # sampling stopped at the β where every chain failed, its statistics NaN
    assert out.betas.tolist() == [0] and np.isnan(out.action0_mean).all()


def _bvp():
    def field(t, y, args):
        x, p = y
        return p, -4.0 * jnp.sin(x)

    bc = lambda y0, y1: jnp.concatenate([y0[0] - 1.0, y1[0] + 0.5])  # noqa: E731
    return deepest.BoundaryValueProblem(field, bc, 0.0, 1.0, dim=1)


def test_solve_tpbvp_throw_raises_or_returns_codes():
    # One Newton step cannot solve a nonlinear problem: the solve failed.
    method = deepest.MultipleShooting(4, steps_per_segment=8, max_newton_steps=1)
    solve = eqx.filter_jit(deepest.solve_tpbvp)
    sol = solve(_bvp(), method, throw=False)
    assert sol.result == deepest.RESULTS.nonlinear_max_steps_reached
    # the error names the RESULTS message, then what to try
    message = deepest.RESULTS[deepest.RESULTS.nonlinear_max_steps_reached][:40]
    with pytest.raises(eqx.EquinoxRuntimeError, match=message):
        solve(_bvp(), method, throw=True)
    good = solve(_bvp(), deepest.MultipleShooting(4, steps_per_segment=8))
    assert good.result == deepest.RESULTS.successful


# -- results own their files ------------------------------------------------------------------


def _assert_equal(a, b):
    assert type(a) is type(b)
    for field in dataclasses.fields(a):
        if field.name == "problem":
            continue
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, deepest.RESULTS):
            same = np.asarray(x == y)
            assert same.shape == np.asarray(x == x).shape and same.all(), field.name
        elif isinstance(x, dict | np.ndarray) or x is None:
            assert jax.tree.structure(x) == jax.tree.structure(y), field.name
            for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
                np.testing.assert_array_equal(u, v, err_msg=field.name)
                assert np.asarray(u).dtype == np.asarray(v).dtype, field.name
        else:
            assert x == y, field.name


@functools.cache
def _annealed():
    problem = _tiny()
    result = deepest.anneal(problem, SCHEDULE, 2, jr.key(0), progress=False, save_betas=[0, 3])
    return problem, result


def test_anneal_result_round_trip(tmp_path):
    problem, result = _annealed()
    path = result.save(tmp_path)
    assert path == os.path.join(tmp_path, "result.npz")
    loaded = deepest.AnnealResult.load(tmp_path, problem)
    _assert_equal(result, loaded)
    assert loaded.problem is problem and sorted(loaded.saved) == [0, 3]
    # the thin wrappers write and read the same file
    deepest.save_result(result, tmp_path / "again")
    _assert_equal(result, deepest.load_result(tmp_path / "again"))
    with pytest.raises(FileExistsError):
        result.save(tmp_path)
    # a file of another result class is refused, naming both
    with pytest.raises(ValueError, match="AnnealResult"):
        deepest.LaplaceResult.load(path)


def test_a_result_file_of_the_former_layout_loads(tmp_path):
    # `save_result` before results owned their files: the loop's stop codes, no kinds
    problem, result = _annealed()
    with pytest.warns(DeprecationWarning):
        codes = result.stop_reason
    names = ("rf", "action", "measurement_error", "model_error", "iterations")
    arrays = {name: getattr(result, name) for name in names}
    arrays["stop_reason"] = codes
    arrays["unknowns/path"] = result.unknowns["path"]
    arrays["unknowns/params/forcing"] = result.unknowns["params"]["forcing"]
    arrays["views/paths"] = result.paths
    arrays["saved/3/path"] = result.saved[3]["path"]
    meta = {"stats": result.stats, "expected_action": None, "partial": False}
    arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(tmp_path / "result.npz", **arrays)
    loaded = deepest.load_result(tmp_path, problem)
    assert np.asarray(loaded.result == result.result).all()
    np.testing.assert_array_equal(loaded.converged_by, result.converged_by)
    np.testing.assert_array_equal(loaded.saved[3]["path"], result.saved[3]["path"])
    forcing = result.unknowns["params"]["forcing"]
    np.testing.assert_array_equal(loaded.unknowns["params"]["forcing"], forcing)


def test_laplace_and_pamc_results_round_trip(tmp_path):
    problem, result = _annealed()
    lap = deepest.laplace(problem, result)
    lap.save(tmp_path)
    assert os.path.isfile(tmp_path / "laplace.npz")
    loaded = deepest.LaplaceResult.load(tmp_path, problem)
    _assert_equal(lap, loaded)
    np.testing.assert_array_equal(loaded.bands()[1], lap.bands()[1])
    mc = _pamc(problem, result, save_betas=[1])
    mc.save(tmp_path / "mc.npz")
    loaded = deepest.PAMCResult.load(tmp_path / "mc.npz", problem)
    _assert_equal(mc, loaded)
    assert list(loaded.samples) == [1]


def test_sweep_result_round_trip(tmp_path):
    points = [_nan_above(np.inf), _nan_above(THRESHOLD)]
    results = deepest.sweep(points, SCHEDULE, 2, jr.key(0), progress=False, throw=False)
    results.save(tmp_path)
    loaded = deepest.SweepResult.load(tmp_path, points)
    assert len(loaded) == 2
    for a, b in zip(results, loaded):
        _assert_equal(a, b)
    assert loaded[1].problem is points[1]


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    problem, result = _annealed()
    path = result.save(tmp_path)
    before = open(path, "rb").read()

    class _Boom(Exception):
        pass

    def half_then_fail(file, **arrays):  # a write that dies midway (disk full, a kill)
        file.write(b"half of a new file")
        raise _Boom

    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(_Boom):
        result.save(tmp_path, overwrite=True)
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["result.npz"]  # no temporary file left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_equal(result, deepest.load_result(tmp_path))
