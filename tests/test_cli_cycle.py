"""`deepest cycle CONFIG.yaml`: a cycle's results folder (cycle.npz, summary.txt with the
statistics of the saved result, cycle.png), an interrupted cycle published as partial and
resumed to exactly the arrays of an unbroken one, and a bad `cycle` section refused
before any compute, naming its key."""

import os

import numpy as np
import pytest

import deepest
import deepest.experiments
from deepest.annealing import INTERRUPT
from deepest.cli import main

from .helpers import ROOT, same_arrays, write_config

# 12 observation times, windows of 2 intervals shifted by 1: 11 windows
TINY = {
    "model": {"name": "lorenz96", "dim": 5, "params": {"forcing": 8.0}},
    "data": {"twin": {"n_times": 12, "dt": 0.05, "observed": [0, 2, 4], "noise": 0.5}},
    "problem": {
        "discretisation": "trapezoid",
        "estimate": ["forcing"],
        "param_ranges": {"forcing": [6.0, 10.0]},
    },
    "anneal": {"rf0": 1.0, "alpha": 10.0, "n_beta": 2},
    "output": {"checkpoint_every": 1e-9},  # a checkpoint after every window
    "cycle": {
        "window": 2,
        "n_paths": 2,
        "warm": 2,  # every β of the first window: one compiled program for all
        "burn_in": 0.1,
        "background": {"mean": "truth", "variance": 0.01},
    },
}
N_WINDOWS = 11
ARRAYS = ("forecast", "forecast_std", "analysis", "analysis_cov", "smoothed", "smoothed_std")


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unbroken")
    config = write_config(folder, TINY)
    out = folder / "run"
    code = main(["cycle", config, "--out", str(out), "--no-progress", "--quiet"])
    return config, out, code


def test_cycle_command(unbroken, capsys):
    config, out, code = unbroken
    assert code == 0
    for name in ("config.yaml", "cycle.npz", "summary.txt", "cycle.png"):
        assert (out / name).exists(), name
    result = deepest.CycleResult.load(out)
    assert not result.partial and result.stopped is None and result.n_windows == N_WINDOWS
    data, _, _ = deepest.experiments.load(config).build_data()
    summary = (out / "summary.txt").read_text()
    assert f"windows: {N_WINDOWS}" in summary and "PARTIAL" not in summary
    rmse, spread = result.rmse(data.truth, burn_in=0.1), result.spread(burn_in=0.1)
    for kind in ("forecast", "analysis", "smoothed"):
        assert f"{kind:<9} RMSE {rmse[kind]:.4g}   spread {spread[kind]:.4g}" in summary
    forcing, std = result.parameters["forcing"][-1], result.params_std[-1, 0]
    assert f"estimated forcing (last window): {np.array2string(forcing, precision=4)}" in summary
    assert f"± {np.array2string(std, precision=2)}" in summary
    # a second run never replaces the first one's results, and a complete one is no resume
    before = (out / "cycle.npz").read_bytes()
    capsys.readouterr()
    assert main(["cycle", config, "--out", str(out), "--no-progress", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["cycle", "--resume", str(out), "--no-progress", "--quiet"]) == 2
    assert "complete" in capsys.readouterr().err
    assert (out / "cycle.npz").read_bytes() == before


def test_interrupted_cycle_resumes_to_the_unbroken_arrays(tmp_path, monkeypatch):
    # every window annealed, so that the Ctrl-C lands between windows (a compiled call of
    # Gauss–Newton windows records all of its windows first: here, all the later ones)
    config = write_config(tmp_path, {**TINY, "cycle": {**TINY["cycle"], "later": "anneal"}})
    whole_out = tmp_path / "whole"
    assert main(["cycle", config, "--out", str(whole_out), "--no-progress", "--quiet"]) == 0
    whole = deepest.CycleResult.load(whole_out)
    out = tmp_path / "run"
    checkpoint = tmp_path / "run.incomplete" / "cycle.npz"
    fired = []

    def ctrl_c():  # Ctrl-C as the command line says it, once the first window is saved
        if checkpoint.exists() and not fired:
            fired.append(True)
        return bool(fired)

    with monkeypatch.context() as patch:
        patch.setattr(INTERRUPT, "is_set", ctrl_c)
        assert main(["cycle", config, "--out", str(out), "--no-progress", "--quiet"]) == 130
    partial = deepest.CycleResult.load(out)
    assert partial.partial and partial.stopped == "interrupted" and partial.n_windows == 1
    assert (out / "summary.txt").read_text().startswith("PARTIAL RESULT")
    assert not (out / "cycle.png").exists()
    assert main(["cycle", "--resume", str(out), "--no-progress", "--quiet"]) == 0
    resumed = deepest.CycleResult.load(out)
    assert not resumed.partial and resumed.n_windows == N_WINDOWS
    assert (out / "cycle.png").exists()
    for name in ARRAYS + ("params", "params_std", "action"):
        assert same_arrays(getattr(resumed, name), getattr(whole, name)), name


@pytest.mark.parametrize(
    "cycle, message",
    [
        ({"windw": 2}, "Unknown key 'windw' in config.cycle. Did you mean 'window'?"),
        ({"window": None}, "Set `cycle.window`."),
        ({"window": 0}, "`cycle.window` must be an integer ≥ 1; got 0."),
        ({"window": 12}, "`cycle.window` (12 observation intervals) is longer than the data"),
        ({"shift": 3}, "`cycle.shift` must be at most `cycle.window` (2); got 3."),
        (
            {"carry": "filter", "window": 3, "shift": 2},
            "`cycle.shift` must divide `cycle.window` (3)",
        ),
        ({"warm": 3}, "`cycle.warm` must be an integer from 1 to `anneal.n_beta` (2); got 3."),
        ({"inflation": 0.0}, "`cycle.inflation` must be a number > 0; got 0.0."),
        ({"burn_in": 0.6}, "`cycle.burn_in` (0.6) leaves no observation time"),
        ({"background": {"mean": "truth", "variance": 0}}, "`cycle.background.variance`"),
        ({"background": {"mean": "truth"}}, "Set `cycle.background.variance`."),
        ({"background": {"mean": [0.0, 1.0], "variance": [1.0]}}, "`cycle.background.variance`"),
        ({"background": {"mean": [0.0, 1.0], "variance": 1.0}}, "5 entries (the first state) or 6"),
        ({"model_error": [1.0, 2.0]}, "`cycle.model_error` must be a variance, 5 variances or"),
        ({"n_paths": 1, "anneal.n_paths": 4}, "`anneal.n_paths` is not read by a cycle"),
    ],
)
def test_bad_cycle_config_is_refused_before_compute(tmp_path, capsys, cycle, message):
    config = {k: dict(v) for k, v in TINY.items()}
    for key, value in cycle.items():
        section, _, name = key.rpartition(".")
        target = config[section or "cycle"]
        if value is None:
            del target[name]
        else:
            target[name] = value
    out = tmp_path / "bad"
    assert main(["cycle", write_config(tmp_path, config), "--out", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "bad.incomplete").exists()


def test_shipped_cycle_config():
    config = deepest.experiments.load(os.path.join(ROOT, "configs", "cycle_l96.yaml"))
    assert deepest.experiments.kind_of(config.model_dump()) == "cycle"
    assert (config.model.dim, config.data.twin.n_times, config.data.twin.noise) == (40, 200, 1.0)
    assert config.cycle.window == 4 and config.cycle.inflation == 1.05
