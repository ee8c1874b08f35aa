"""The `train` command: results written, one folder per depth, unknown keys named."""

import numpy as np
import pytest
import yaml

import deepest
from deepest.cli import main
from deepest.experiments import TRAIN_EXPERIMENTS

from .helpers import write_config

TINY = {
    "anneal": {"n_paths": 2, "n_beta": 3, "rf0": 1.0, "alpha": 10.0, "max_evaluations": 200},
    "backprop": {"steps": 5, "n_runs": 1},
}


def test_train_twin_writes_results(tmp_path, capsys):
    config = {
        "experiment": "twin_network",
        "data": {"width": 3, "generator_layers": 4, "n_train": 4, "n_validation": 5, "n_test": 6},
        "network": {"widths": [3, 3, 3]},
        **TINY,
    }
    out = tmp_path / "out"
    code = main(
        [
            "train",
            write_config(tmp_path, config),
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "backprop.learning_rate=0.02",
        ]
    )
    assert code == 0
    for name in ("config.yaml", "result.npz", "action_levels.png", "summary.txt"):
        assert (out / name).is_file()
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["backprop"]["learning_rate"] == 0.02
    assert resolved["problem"]["rm"] == pytest.approx(1 / 0.005**2)
    assert set(resolved) == set(TRAIN_EXPERIMENTS["twin_network"].model_fields)
    summary = (out / "summary.txt").read_text()
    assert "annealing" in summary and "backprop" in summary and "test MSE" in summary
    result = deepest.load_result(out)
    assert result.action.shape == (3, 2) and result.train_error.shape == (2,)
    assert "results:" in capsys.readouterr().out


def test_train_depth_resolution_folder_per_depth(tmp_path):
    config = {
        "experiment": "depth_resolution",
        "data": {"n_train": 3, "n_validation": 4, "n_test": 4},
        "network": {"depths": [3]},
        **{k: v for k, v in TINY.items()},
    }
    config["anneal"] = {k: v for k, v in TINY["anneal"].items() if k != "rf0"}
    out = tmp_path / "out"
    assert main(["train", write_config(tmp_path, config), "--out", str(out), "--no-progress"]) == 0
    for depth in (3,):
        result = deepest.load_result(out / f"L{depth:03d}")
        # R_f^disc = R_f^cont·D·T/(2h²) with D = 2, T = 1, h = 1/L, R_f^cont = 1e-4.
        np.testing.assert_allclose(result.rf[0], 1e-4 * 2 * 1.0 / (2 / depth**2), rtol=1e-12)
    assert "depth L = 3" in (out / "summary.txt").read_text()


@pytest.mark.parametrize(
    "config, nearest",
    [
        ({"experiment": "bar_images", "anneal": {"n_path": 2}}, "n_paths"),
        ({"experiment": "bar_images", "netwrk": {}}, "network"),
        ({"experiment": "twin_netwrk"}, "twin_network"),
    ],
)
def test_unknown_key_names_nearest(tmp_path, capsys, config, nearest):
    code = main(["train", write_config(tmp_path, config), "--out", str(tmp_path / "o")])
    assert code == 2
    assert repr(nearest) in capsys.readouterr().err
