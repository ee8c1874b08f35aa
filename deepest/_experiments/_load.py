"""`load(path, overrides)` and `resolve(mapping)`: a config file or mapping to its config object."""

import copy
import os
from collections.abc import Mapping, Sequence

from .._misc import did_you_mean
from ._anneal import AnnealConfig
from ._base import read_yaml, set_dotted, validate
from ._continuous import CONTINUOUS_EXPERIMENTS
from ._cycle import CycleConfig
from ._pamc import PAMCConfig
from ._sweep import SweepConfig
from ._train import TRAIN_EXPERIMENTS

KINDS = ("anneal", "pamc", "cycle", "train", "sweep", "notebook")
"""The kinds of experiment: `deepest anneal|pamc|cycle|train|sweep`, and the notebooks'
continuous-layer experiments."""


def kind_of(config: Mapping) -> str:
    """The kind a config's keys say: `experiment` → train (or notebook), `pamc` → pamc,
    `cycle` → cycle, `grid` → sweep, else anneal."""
    if "experiment" in config:
        return "notebook" if config["experiment"] in CONTINUOUS_EXPERIMENTS else "train"
    if "pamc" in config:
        return "pamc"
    if "cycle" in config:
        return "cycle"
    if "grid" in config or "base" in config:
        return "sweep"
    return "anneal"


def resolve(
    config: Mapping,
    overrides: Sequence[str] = (),
    kind: str | None = None,
    where: str = ".",
):
    """The config object of the mapping `config` with the `key=value` `overrides` applied,
    every key checked (a `ValueError` names each bad one by its dotted path).

    **Arguments:**

    - `config`: the mapping (as read from YAML).
    - `overrides`: `a.b.c=value` assignments, the value parsed as YAML.
    - `kind`: one of `KINDS`; default: from the keys (`kind_of`).
    - `where`: the folder a sweep's `base` file is relative to.

    **Returns:** an [`AnnealConfig`][deepest.experiments.AnnealConfig],
    [`PAMCConfig`][deepest.experiments.PAMCConfig],
    [`CycleConfig`][deepest.experiments.CycleConfig], a train config or a
    [`SweepConfig`][deepest.experiments.SweepConfig].
    """
    raw = copy.deepcopy(dict(config or {}))
    kind = kind_of(raw) if kind is None else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.{did_you_mean(kind, KINDS)}")
    experiment = raw.get("experiment")
    for assignment in overrides:
        set_dotted(raw, assignment)
    if kind == "sweep":
        if overrides:
            raise ValueError("A sweep takes no overrides: put the settings in its base or grid.")
        return SweepConfig(raw, where)
    if kind in ("train", "notebook"):
        registry = TRAIN_EXPERIMENTS if kind == "train" else CONTINUOUS_EXPERIMENTS
        if experiment is None:
            raise ValueError(f"Set `experiment` to one of {tuple(registry)}.")
        if experiment not in registry:
            names = list(registry)
            raise ValueError(
                f"Unknown experiment {experiment!r}.{did_you_mean(experiment, names)} "
                f"Valid: {', '.join(names)}."
            )
        if raw.get("experiment") != experiment:
            raise ValueError("`experiment` cannot be changed by an override; edit the config file.")
        return validate(registry[experiment], raw)
    configs = {"pamc": PAMCConfig, "cycle": CycleConfig}
    return validate(configs.get(kind, AnnealConfig), raw)


def load(path: str | os.PathLike, overrides: Sequence[str] = (), kind: str | None = None):
    """The config object of the YAML file `path`, with the `key=value` `overrides`.

    A YAML syntax error names the file, line and column; every key is checked before
    anything is computed, each error naming its dotted key (an unknown key with the nearest
    valid one). Defaults are those of the library's own signatures.

    Example:

        config = deepest.experiments.load("configs/lorenz96_L12.yaml", ["anneal.n_paths=4"])
        problem, schedule, data, true_model = config.build()
    """
    path = os.fspath(path)
    return resolve(read_yaml(path), overrides, kind, os.path.dirname(os.path.abspath(path)))
