"""Problems shared by the tests."""

import json
import os

import jax.random as jr

import deepest
import deepest.experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_problem(discretization="trapezoid", steps_per_obs=1, n_times=21, dim=8, **kwargs):
    """A small Lorenz-96 twin experiment: half the components observed, forcing estimated."""
    data = deepest.twin_experiment(
        deepest.models.Lorenz96(8.17), dim, n_times, 0.05, range(0, dim, 2), 0.4, jr.key(0)
    )
    return deepest.Assimilation(
        deepest.models.Lorenz96(8.0),
        data,
        rm=1 / 0.4**2,
        discretization=discretization,
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
