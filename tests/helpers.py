"""Problems shared by the tests."""

import os

import jax.random as jr
import yaml

import deepest
from deepest.cli import build_anneal, resolve_anneal_config

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
    """The problem, schedule, data and true model of a shipped config."""
    with open(os.path.join(ROOT, "configs", name)) as f:
        config = yaml.safe_load(f)
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    config = resolve_anneal_config(config)
    return (*build_anneal(config), config)
