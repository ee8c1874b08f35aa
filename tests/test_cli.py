import os

import numpy as np
import pytest
import yaml

import deepest
import deepest.experiments
from deepest.cli import main

from .helpers import ROOT, write_config

TINY = {
    "model": {"name": "lorenz96", "dim": 8, "params": {"forcing": 8.17}},
    "data": {"twin": {"n_times": 21, "dt": 0.05, "observed": [0, 2, 4, 6], "noise": 0.4}},
    "problem": {"estimate": ["forcing"], "param_ranges": {"forcing": [6.0, 10.0]}},
    "anneal": {"rf0": 1e-3, "alpha": 2.0, "n_beta": 12, "n_paths": 4},
    "output": {"forecast_horizon": 0.3},
}


def test_anneal_command(tmp_path, capsys):
    config = write_config(tmp_path, TINY)
    out = tmp_path / "run"
    assert (
        main(["anneal", config, "--out", str(out), "--no-progress", "--set", "anneal.n_paths=3"])
        == 0
    )
    for name in (
        "config.yaml",
        "result.npz",
        "action_levels.png",
        "estimates.png",
        "summary.txt",
        "data.npz",
    ):
        assert (out / name).exists(), name
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["anneal"]["n_paths"] == 3
    assert resolved["problem"]["rm"] == pytest.approx(1 / 0.4**2)
    summary = (out / "summary.txt").read_text()
    for text in (
        "measurement error (best)",
        "RMS error, unobserved components",
        "estimated forcing",
        "forecast RMS error over 0.3",
    ):
        assert text in summary
    result = deepest.load_result(out)
    assert result.action.shape == (12, 3)
    printed = capsys.readouterr().out
    assert str(out) in printed and "action_levels.png" in printed
    # a second run never overwrites what the first one saved
    before = (out / "result.npz").read_bytes()
    assert main(["anneal", config, "--out", str(out), "--no-progress"]) != 0
    assert (out / "result.npz").read_bytes() == before


@pytest.mark.parametrize(
    "change, message",
    [
        ({"anneal": {"n_path": 4}}, "Did you mean 'n_paths'"),
        ({"anneal": {"alpha": 1.0}}, "alpha"),
        ({"anneal": {"rf0": 0.0}}, "rf0"),
        ({"anneal": {"n_beta": 0}}, "n_beta"),
        ({"anneal": {"n_paths": 0}}, "n_paths"),
        ({"anneal": {"minimiser": "newton"}}, "levenberg_marquardt"),
        ({"anneal": {"minimiser": "levenberg_marquardt", "damping": 0.0}}, "damping"),
        ({"anneal": {"history_length": 0}}, "history_length"),
        ({"problem": {"rm": -1.0}}, "rm"),
        ({"problem": {"estimate": ["forcng"]}}, "Did you mean 'forcing'"),
        ({"data": {"twin": {"observed": [0, 9]}}}, "range"),
        ({"modle": {}}, "Did you mean 'model'"),
    ],
)
def test_bad_config(tmp_path, capsys, change, message):
    config = {k: dict(v) for k, v in TINY.items()}
    for section, values in change.items():
        config.setdefault(section, {})
        for k, v in values.items():
            if isinstance(v, dict) and isinstance(config[section].get(k), dict):
                config[section][k] = {**config[section][k], **v}
            else:
                config[section][k] = v
    out = tmp_path / "bad"
    assert main(["anneal", write_config(tmp_path, config), "--out", str(out), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "result.npz").exists()


def test_unknown_set_key(tmp_path, capsys):
    config = write_config(tmp_path, TINY)
    assert (
        main(
            [
                "anneal",
                config,
                "--set",
                "anneal.alfa=2",
                "--no-progress",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "Did you mean 'alpha'" in capsys.readouterr().err


def test_shipped_configs_resolve():
    for name in ("lorenz96_L12.yaml", "lorenz96_L8.yaml"):
        config = deepest.experiments.load(os.path.join(ROOT, "configs", name)).model_dump()
        assert config["model"]["dim"] == 20
        assert config["data"]["twin"]["n_times"] == 161
        assert config["data"]["twin"]["noise"] == 0.4
        assert config["model"]["params"]["forcing"] == 8.17
        assert config["problem"]["estimate"] == ["forcing"]
    assert len(np.unique(config["data"]["twin"]["observed"])) == 8


def test_every_shipped_config_runs_under_a_subcommand():
    # configs/ holds what `deepest anneal`, `deepest pamc` or `deepest train` runs; a notebook's own
    # settings live beside it in notebooks/ (tests/test_config.py builds every one).
    names = sorted(os.listdir(os.path.join(ROOT, "configs")))
    assert len(names) >= 5
    kinds = {"train": 0, "pamc": 0, "anneal": 0, "cycle": 0}
    for name in names:
        config = deepest.experiments.load(os.path.join(ROOT, "configs", name))
        kinds[deepest.experiments.kind_of(config.model_dump())] += 1
    assert all(kinds.values()), kinds


def test_anneal_with_laplace_and_pamc_commands(tmp_path, capsys):
    config = write_config(tmp_path, TINY)
    out = tmp_path / "laplace"
    assert main(["anneal", config, "--out", str(out), "--no-progress", "--laplace"]) == 0
    assert (out / "uncertainty.png").exists()
    summary = (out / "summary.txt").read_text()
    assert "Laplace at the final β" in summary and "truth inside ±2σ, unobserved" in summary
    assert "forcing: " in summary and "(1σ)" in summary
    lap = deepest.LaplaceResult.load(out)
    assert lap.paths_std.shape == (4, 21, 8) and lap.positive_definite.all()
    assert np.all(lap.params_std["forcing"] > 0)

    # HMC with few leapfrog steps: the smallest program that runs the whole command
    section = {"n_chains": 4, "n_samples": 8, "n_warmup": 8, "kernel": "hmc"}
    section.update(num_integration_steps=4, betas=[10, 11])
    pamc = {**TINY, "pamc": section}
    out = tmp_path / "pamc"
    assert main(["pamc", write_config(tmp_path, pamc), "--out", str(out), "--no-progress"]) == 0
    for name in ("result.npz", "pamc.npz", "uncertainty.png", "expected_action.png", "summary.txt"):
        assert (out / name).exists(), name
    summary = (out / "summary.txt").read_text()
    assert "precision annealing Monte Carlo: 4 chains (hmc)" in summary and "⟨A₀⟩ per β" in summary
    mc = deepest.PAMCResult.load(out)
    assert mc.betas.tolist() == [10, 11] and mc.action0_mean.shape == (2,)
    assert mc.samples[11]["paths"].shape == (4, 8, 21, 8)
    assert mc.unknown_samples[11]["path"].shape == (4, 8, 21, 8)
    assert "expected_action.png" in capsys.readouterr().out


@pytest.mark.parametrize(
    "section, message",
    [
        ({"n_chains": 0}, "`pamc.n_chains` must be an integer ≥ 1"),
        ({"kernal": "nuts"}, "Did you mean 'kernel'"),
        ({"kernel": "mala"}, "`pamc.kernel`"),
        ({"betas": [5, 3]}, "`pamc.betas` must increase"),
        ({"betas": [3, 40]}, "out of range"),
        ({"betas": [5], "save_betas": [4]}, "not run: [4]"),
        ({"target_acceptance": 1.5}, "`pamc.target_acceptance`"),
    ],
)
def test_bad_pamc_config(tmp_path, capsys, section, message):
    config = write_config(tmp_path, {**TINY, "pamc": section})
    out = tmp_path / "bad"
    assert main(["pamc", config, "--out", str(out), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
