"""PAMC's long-run tools: interruption between β's, checkpoints and a resume that ends bit
for bit where the uninterrupted run ends, the partial result, and `warnings()`."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest
from deepest.annealing import INTERRUPT

ROTATION = np.array([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.0, -0.3, -0.2]])
# Small enough to compile and sample in seconds (8 draws: short enough for warnings());
# three β's so that a resume crosses both a saved β (0) and one that is not (1).
SETTINGS = dict(n_samples=8, n_warmup=50, kernel="hmc", betas=[0, 1, 2], save_betas=[0, 2])


@pytest.fixture(autouse=True)
def _clear_interrupt():
    """A test that fails before pamc answers INTERRUPT must not stop the next test's run."""
    yield
    INTERRUPT.clear()


@functools.cache
def _problem():
    """A damped rotation in D = 3 observed in component 0 at 8 times: A₀ is quadratic."""
    times = np.linspace(0.0, 2.0, 8)
    truth = np.stack([np.cos(times), -np.sin(times), 0.5 * np.exp(-0.2 * times)], axis=1)
    noise = np.random.default_rng(0).normal(size=(8, 1))
    data = deepest.Observations(times, truth[:, [0]] + 0.2 * noise, observed=[0], noise=0.2)
    problem = deepest.Assimilation(
        lambda t, x: jnp.asarray(ROTATION) @ x, data, rm=1 / 0.2**2, dim=3
    )
    return problem, deepest.AnnealSchedule(rf0=1.0, alpha=2.0, n_beta=3)


def _pamc(**kwargs):
    problem, schedule = _problem()
    return deepest.pamc(problem, schedule, n_chains=3, key=jr.key(7), **{**SETTINGS, **kwargs})


@functools.cache
def _uninterrupted():
    return _pamc()


def _interrupted(folder):
    """A run stopped by INTERRUPT while its first β runs (checkpoint in `folder`)."""
    INTERRUPT.set()
    with pytest.warns(UserWarning, match="PAMC interrupted after β = 0"):
        return _pamc(checkpoint=folder)


def _assert_identical(a, b, steps=True):
    for field in dataclasses.fields(a):
        name = field.name
        if name in ("problem", "stats", "partial"):
            continue
        x, y = getattr(a, name), getattr(b, name)
        if name == "result":  # the codes, one member at a time
            members = ("successful", "nonfinite", "not_positive_definite")
            x, y = ([r == getattr(deepest.RESULTS, m) for m in members] for r in (x, y))
        assert jax.tree.structure(x) == jax.tree.structure(y), name
        jax.tree.map(np.testing.assert_array_equal, x, y)
    if steps:
        assert a.stats["leapfrog_steps"] == b.stats["leapfrog_steps"]


def test_resume_is_bit_identical(tmp_path, capfd):
    full = _uninterrupted()
    assert full.betas.tolist() == [0, 1, 2] and not full.partial
    _interrupted(tmp_path)
    # interrupted again after the next β: a checkpoint written by a resumed run resumes too
    INTERRUPT.set()
    capfd.readouterr()
    with pytest.warns(UserWarning, match="after β = 1"):
        middle = _pamc(checkpoint=tmp_path, resume=tmp_path, progress=True)
    err = capfd.readouterr().err
    assert "β 1: compiling" in err and "β 1 (R_f 2): acceptance" in err and "max R̂" in err
    assert middle.partial and middle.betas.tolist() == [0, 1] and set(middle.samples) == {0}
    resumed = _pamc(checkpoint=tmp_path, resume=tmp_path)
    assert capfd.readouterr().err == ""  # progress=False shows nothing
    assert not resumed.partial and resumed.betas.tolist() == [0, 1, 2]
    _assert_identical(full, resumed)
    # a finished run's checkpoint resumes to the same result without sampling
    _assert_identical(full, _pamc(resume=tmp_path))


def test_partial_result(tmp_path):
    partial = _interrupted(tmp_path)
    assert not INTERRUPT.is_set()  # answered, so cleared
    assert partial.partial and partial.betas.tolist() == [0]
    assert partial.rf.shape == (1,) and partial.acceptance.shape == (1, 3)
    assert set(partial.samples) == {0} and set(partial.unknown_samples) == {0}
    full = _uninterrupted()
    _assert_identical(partial, _first_beta(full), steps=False)
    assert any("interrupted after β = 0" in line for line in partial.warnings())
    loaded = deepest.PAMCResult.load(partial.save(tmp_path / "out"))
    assert loaded.partial and not deepest.PAMCResult.load(full.save(tmp_path / "full")).partial


def _first_beta(result):
    """`result` cut to its first β (what a run interrupted there holds)."""
    cut = lambda tree: jax.tree.map(lambda a: a[:1], tree)  # noqa: E731
    return dataclasses.replace(
        result,
        **{
            name: cut(getattr(result, name))
            for name in ("betas", "rf", "action0_mean", "action0_std", "mean", "std")
            + ("mc_error", "ess", "rhat", "views", "acceptance", "step_size")
        },
        samples={0: result.samples[0]},
        unknown_samples={0: result.unknown_samples[0]},
    )


def test_resume_of_another_run_is_refused(tmp_path):
    _interrupted(tmp_path)
    with pytest.raises(ValueError, match=r"differs in settings: n_samples \(8 there, 24 here\)"):
        _pamc(n_samples=24, resume=tmp_path)
    with pytest.raises(ValueError, match=r"differs in key"):
        problem, schedule = _problem()
        deepest.pamc(problem, schedule, n_chains=3, key=jr.key(8), resume=tmp_path, **SETTINGS)
    with pytest.raises(ValueError, match=r"betas \(\[0, 1, 2\] there, \[0, 2\] here\)"):
        _pamc(betas=[0, 2], resume=tmp_path)


def test_missing_or_damaged_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        _pamc(resume=tmp_path / "absent")
    with pytest.raises(ValueError, match="holds no PAMC checkpoint"):
        _pamc(resume=tmp_path)
    (tmp_path / deepest.PAMCResult.checkpoint_name).write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="is not a readable PAMC checkpoint"):
        _pamc(resume=tmp_path)
    # a result file under the checkpoint's name
    _uninterrupted().save(tmp_path / deepest.PAMCResult.checkpoint_name, overwrite=True)
    with pytest.raises(ValueError, match="is not a PAMC checkpoint"):
        _pamc(resume=tmp_path)
    with pytest.raises(ValueError, match="is a file, not a folder"):
        _pamc(checkpoint=tmp_path / deepest.PAMCResult.checkpoint_name)
    # a checkpoint of this run that lost an array
    _interrupted(tmp_path / "run")
    file = tmp_path / "run" / deepest.PAMCResult.checkpoint_name
    with np.load(file) as f:
        arrays = {k: f[k] for k in f.files if k != "positions"}
    np.savez(file, **arrays)
    with pytest.raises(ValueError, match="is not a whole PAMC checkpoint: it lacks 'positions'"):
        _pamc(resume=tmp_path / "run")


def test_warnings_name_the_short_beta():
    lines = _uninterrupted().warnings()
    # 3 chains × 8 draws cannot give an ESS of 100 at any β
    for beta, rf in ((0, "1"), (1, "2"), (2, "4")):
        assert any(
            line.startswith(f"β = {beta} (R_f = {rf}): min ESS = ") and "n_samples" in line
            for line in lines
        ), lines
    assert not any("interrupted" in line or "chains failed" in line for line in lines)


def test_warnings_name_failed_chains():
    problem, schedule = _problem()
    start = jax.tree.map(np.array, jax.vmap(problem.init)(jr.split(jr.key(0), 3)))
    start["path"][1, 3, 1] = np.nan
    out = deepest.pamc(problem, schedule, 3, jr.key(7), init=start, **SETTINGS)
    assert out.finite.tolist() == [True, False, True]
    assert any(line.startswith("1 of 3 chains failed (nonfinite") for line in out.warnings())
