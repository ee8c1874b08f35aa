import os

import pytest
import yaml

from deepest.experiments import resolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shipped_configs_resolve():
    for name in ("twin_network", "bar_images", "depth_resolution"):
        with open(os.path.join(ROOT, "configs", f"{name}.yaml")) as f:
            raw = yaml.safe_load(f)
        config = resolve(raw)
        assert config.experiment == name
        # Every hyperparameter is in the file: resolving adds nothing.
        assert config.model_dump() == raw


def test_rf_scale():
    config = resolve({"experiment": "depth_resolution", "data": {"dim": 3, "horizon": 2.0}})
    # D·T/(2h²) with h = T/L = 0.2.
    assert config.rf_scale(10) == pytest.approx(3 * 2.0 / (2 * 0.04))


def test_bad_values():
    with pytest.raises(ValueError, match="activation"):
        resolve({"experiment": "bar_images", "network": {"activation": "swish"}})
    with pytest.raises(ValueError, match="n_train"):
        resolve({"experiment": "bar_images", "data": {"n_train": 0}})
    with pytest.raises(ValueError, match="experiment"):
        resolve({}, kind="train")
    with pytest.raises(ValueError, match="minimiser"):
        resolve({"experiment": "bar_images", "anneal": {"minimiser": "levenberg_marquardt"}})
    with pytest.raises(ValueError, match="history_length"):
        resolve({"experiment": "bar_images", "anneal": {"history_length": 0}})
