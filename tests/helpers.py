"""Problems and helpers shared by the tests."""

import json
import os

import jax.random as jr
import numpy as np
import yaml

import deepest
import deepest.experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_problem(discretisation="trapezoid", steps_per_obs=1, n_times=21, dim=8, **kwargs):
    """A small Lorenz-96 twin experiment: half the components observed, forcing estimated."""
    data = deepest.twin_experiment(
        deepest.models.Lorenz96(8.17), dim, n_times, 0.05, range(0, dim, 2), 0.4, jr.key(0)
    )
    return deepest.Assimilation(
        deepest.models.Lorenz96(8.0),
        data,
        rm=1 / 0.4**2,
        discretisation=discretisation,
        steps_per_obs=steps_per_obs,
        estimate=("forcing",),
        param_ranges={"forcing": (6.0, 10.0)},
        **kwargs,
    )


def config_problem(name, **overrides):
    """The problem, schedule, data and true model of a shipped config, and the config;
    `overrides` maps a section to the keys it sets (`anneal={"n_beta": 4}`)."""
    sets = [
        f"{s}.{k}={json.dumps(v)}" for s, values in overrides.items() for k, v in values.items()
    ]
    config = deepest.experiments.load(os.path.join(ROOT, "configs", name), sets)
    return (*config.build(), config)


def write_config(folder, config, name="tiny.yaml"):
    """Writes `config` as YAML to `folder/name`; returns the path as a string."""
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def same_arrays(a, b) -> bool:
    """Equal arrays, NaN equal to NaN (where the dtype has NaN: `converged_by` is text)."""
    return np.array_equal(a, b, equal_nan=np.issubdtype(np.asarray(a).dtype, np.inexact))
