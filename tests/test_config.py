"""The experiment-configuration layer (`deepest.experiments`): every shipped config builds,
defaults are the library's, and every error names its key."""

import inspect
import os

import jax.random as jr
import numpy as np
import pytest

import deepest
import deepest.experiments as dx

from .helpers import ROOT

SHIPPED = sorted(
    [os.path.join("configs", n) for n in os.listdir(os.path.join(ROOT, "configs"))]
    + [os.path.join("notebooks", n) for n in os.listdir(os.path.join(ROOT, "notebooks"))]
)
SHIPPED = [n for n in SHIPPED if n.endswith(".yaml")]

TINY = {
    "model": {"name": "lorenz96", "dim": 8, "params": {"forcing": 8.17}},
    "data": {"twin": {"n_times": 11, "dt": 0.05, "observed": [0, 2, 4, 6], "noise": 0.4}},
    "problem": {"estimate": ["forcing"], "param_ranges": {"forcing": [6.0, 10.0]}},
    "anneal": {"rf0": 1e-3, "n_beta": 4, "n_paths": 2},
}


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_builds(name):
    config = dx.load(os.path.join(ROOT, name))
    if isinstance(config, dx.AnnealConfig):
        problem, schedule, data, _ = config.build()
        assert isinstance(problem, deepest.Assimilation)
        assert schedule.n_beta == config.anneal.n_beta
        assert data.values.shape[0] == config.data.twin.n_times
        assert set(config.run_options()) >= {"max_evaluations", "minimiser", "save_betas"}
        if isinstance(config, dx.PAMCConfig):
            assert config.pamc_options()["betas"] == config.betas()
    elif isinstance(config, dx.TrainConfig):
        small = dx.resolve(
            config.model_dump(), ["data.n_validation=2", "data.n_test=2"], kind="train"
        )
        data = small.build_data()
        depth = small.depths()[0]
        problem = small.problem_for(data, depth)
        assert isinstance(problem, deepest.AbstractTraining)
        assert small.schedule(depth).n_beta == small.anneal.n_beta
    else:
        built = config.at_smoke_size().build()
        assert built is not None
    # What a run writes as its config.yaml resolves to the same config.
    assert dx.resolve(config.model_dump(), kind=dx.kind_of(config.model_dump())) == config


def test_build_is_the_public_api():
    config = dx.resolve(TINY)
    problem, schedule, data, true_model = config.build()
    twin = deepest.twin_experiment(
        deepest.models.Lorenz96(8.17), 8, 11, 0.05, [0, 2, 4, 6], 0.4, jr.key(0)
    )
    np.testing.assert_array_equal(data.values, twin.values)
    assert float(problem.rm) == pytest.approx(1 / 0.4**2)
    np.testing.assert_allclose(schedule.rf0, 1e-3)
    assert isinstance(config.run_options()["minimiser"], deepest.LBFGS)


def test_defaults_are_the_librarys():
    defaults = dx.AnnealSection()
    anneal_args = inspect.signature(deepest.anneal).parameters
    assert defaults.max_evaluations == anneal_args["max_evaluations"].default
    assert dx.OutputConfig().checkpoint_every == anneal_args["checkpoint_every"].default
    assert defaults.history_length == deepest.LBFGS().history_length
    assert defaults.damping == deepest.LevenbergMarquardt().damping
    assert (
        dx.PAMCSection().n_warmup == inspect.signature(deepest.pamc).parameters["n_warmup"].default
    )


def test_registries():
    assert dx.MODELS["lorenz96"] is deepest.models.Lorenz96
    assert dx.MODELS["lorenz63"] is deepest.models.Lorenz63
    lm = dx.resolve(TINY, ["anneal.minimiser=levenberg_marquardt", "anneal.damping=0.1"])
    assert lm.run_options()["minimiser"] == deepest.LevenbergMarquardt(damping=0.1)
    path = dx.resolve(TINY, ["model.name=deepest.models.Lorenz96"])
    assert isinstance(path.build().true_model, deepest.models.Lorenz96)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["anneal.n_path=3"], "Unknown key 'n_path' in config.anneal. Did you mean 'n_paths'?"),
        (["modle.dim=3"], "Did you mean 'model'?"),
        (["model.name=lorenz69"], "`model.name` must be one of"),
        (["model.name=lorenz69"], "Did you mean 'lorenz96'?"),
        (["anneal.minimiser=lbgfs"], "Did you mean 'lbfgs'?"),
        (["anneal.alpha=1.0"], "`anneal.alpha` must be greater than 1"),
        (["anneal.history_length=0"], "`anneal.history_length`"),
        (["anneal.n_paths=0"], "`anneal.n_paths` must be an integer ≥ 1; got 0."),
        (["anneal.n_paths=two"], "`anneal.n_paths` must be an integer ≥ 1; got 'two'."),
        (["problem.discretisation=trapezium"], "Did you mean 'trapezoid'?"),
        (["problem.estimate=[forcng]"], "`problem.estimate`"),
        (["output.save_betas=[9]"], "`output.save_betas` has β 9, out of range [0, 4)."),
        (["anneal.n_paths.x=1"], "anneal.n_paths is not a section"),
    ],
)
def test_errors_name_the_dotted_key(overrides, message):
    with pytest.raises(ValueError) as e:
        dx.resolve(TINY, overrides)
    assert message in str(e.value)


def test_every_bad_key_reported_at_once():
    with pytest.raises(ValueError) as e:
        dx.resolve(TINY, ["anneal.n_paths=0", "data.twin.dt=-1.0", "output.forecast_horizn=1"])
    text = str(e.value)
    for key in ("anneal.n_paths", "data.twin.dt", "forecast_horizn"):
        assert key in text


def test_yaml_error_names_file_line_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  dim: [1,\n")
    with pytest.raises(ValueError, match=r"bad\.yaml:3:1: YAML syntax error"):
        dx.load(path)


def test_set_value_that_is_not_yaml_names_the_key():
    path = os.path.join(ROOT, "configs", "lorenz96_L12.yaml")
    with pytest.raises(
        ValueError, match=r"^--set anneal\.n_paths: the value '\[1,' is not valid YAML: "
    ):
        dx.load(path, ["anneal.n_paths=[1,"])


def test_sweep_points_checked():
    sweep = dx.resolve({"base": TINY, "grid": {"anneal.rf0": [1e-3, 1e-2]}}, kind="sweep")
    assert [p.config.anneal.rf0 for p in sweep.points] == [1e-3, 1e-2]
    with pytest.raises(ValueError, match="Did you mean 'anneal.rf0'"):
        dx.resolve({"base": TINY, "grid": {"anneal.rf": [1.0]}}, kind="sweep")
    with pytest.raises(ValueError, match=r"sweep point \(anneal.n_paths=0\)"):
        dx.resolve({"base": TINY, "grid": {"anneal.n_paths": [0]}}, kind="sweep")


def test_train_and_notebook_experiments():
    config = dx.resolve({"experiment": "depth_resolution", "data": {"dim": 3, "horizon": 2.0}})
    # R_f^disc / R_f^cont = D·T/(2h²) with h = T/L = 0.2.
    assert config.rf_scale(10) == pytest.approx(3 * 2.0 / (2 * 0.04))
    with pytest.raises(ValueError, match="Did you mean 'twin_network'"):
        dx.resolve({"experiment": "twin_netwrk"})
    with pytest.raises(ValueError, match="`anneal.minimiser` must be one of 'lbfgs'"):
        dx.resolve({"experiment": "bar_images", "anneal": {"minimiser": "levenberg_marquardt"}})
    with pytest.raises(ValueError, match="cannot be changed"):
        dx.resolve({"experiment": "bar_images"}, ["experiment=twin_network"])
    notebook = dx.load(os.path.join(ROOT, "notebooks", "continuous_twin.yaml"))
    assert notebook.at_smoke_size().train.steps == notebook.smoke["steps"]
