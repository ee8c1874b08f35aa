"""The anneal experiment: a data-assimilation problem, its schedule and minimiser, from a config."""

import os
from typing import Any, Literal, NamedTuple

import numpy as np
import pydantic
from pydantic import Field

from .. import models as _models
from .._annealing import LBFGS, AnnealSchedule, LevenbergMarquardt, anneal
from .._assimilation import Assimilation
from .._data import Observations, chaotic_current, check_twin_memory, twin_experiment
from .._misc import did_you_mean
from ._base import (
    ConfigSection,
    beta_indices,
    default_of,
    interval,
    library_check,
    numbers,
    renamed_keys,
)


def _registry_of_models() -> dict[str, type]:
    """Every concrete model in `deepest.models`, by its lower-case class name."""
    out = {}
    for name in dir(_models):
        cls = getattr(_models, name)
        if (
            isinstance(cls, type)
            and issubclass(cls, _models.AbstractModel)
            and not name.startswith("Abstract")
        ):
            out[name.lower()] = cls
    return out


MODELS: dict[str, type] = _registry_of_models()
"""The models a config names (`model.name`), by name; a dotted class path also works."""

MINIMISERS: dict[str, type] = {"lbfgs": LBFGS, "levenberg_marquardt": LevenbergMarquardt}
"""The minimisers a config names (`anneal.minimiser`); each takes the `anneal` keys that
are its own fields (`history_length`, `damping`)."""


def lookup(key: str, name: Any, registry: dict[str, type]) -> type:
    """`registry[name]`, or the class at the dotted path `name` (`package.module.Class`);
    an unknown name is an error naming `key` and the nearest registered name."""
    if isinstance(name, str) and name in registry:
        return registry[name]
    if isinstance(name, str) and "." in name:
        import importlib

        module, _, attribute = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            raise ValueError(f"`{key}`: cannot import {name!r}.") from None
    hint = did_you_mean(name, registry) if isinstance(name, str) else ""
    raise ValueError(
        f"`{key}` must be one of {', '.join(map(repr, registry))} (or a class path); "
        f"got {name!r}.{hint}"
    )


class ModelConfig(ConfigSection):
    """`model`: the dynamical model (a name in `MODELS` or a class path) and its parameters."""

    name: str = "lorenz96"
    dim: int = Field(20, ge=1)
    params: dict[str, Any] = {}

    @pydantic.field_validator("name")
    @classmethod
    def _known(cls, name):
        lookup("model.name", name, MODELS)
        return name

    @pydantic.field_validator("params")
    @classmethod
    def _numbers(cls, params):
        for name, value in params.items():
            numbers(f"model.params.{name}", value)
        # as floats: `forcing: 8` is the parameter 8.0 (a model's int field is no parameter)
        return {
            name: [float(v) for v in value] if isinstance(value, list) else float(value)
            for name, value in params.items()
        }

    def build(self, params: dict | None = None):
        """The model, with `params` over the section's own."""
        return lookup("model.name", self.name, MODELS)(**{**self.params, **(params or {})})


class TwinConfig(ConfigSection):
    """`data.twin`: a twin experiment ([`deepest.twin_experiment`][])."""

    n_times: int = Field(161, ge=2)
    dt: float = Field(0.025, gt=0)
    observed: list[int] | None = None
    noise: float = Field(0.4, ge=0)
    seed: int = Field(0, ge=0)
    spinup: float = Field(default_of(twin_experiment, "spinup"), ge=0)
    substeps: int = Field(default_of(twin_experiment, "substeps"), ge=1)
    x0: list[float] | None = None


class ChaoticCurrentConfig(ConfigSection):
    """`data.inputs.chaotic`: a [`deepest.chaotic_current`][] sampled every `dt` over
    [0, `t1`]."""

    t1: float = Field(gt=0)
    dt: float = Field(gt=0)
    mean: float = default_of(chaotic_current, "mean")
    amplitude: float = default_of(chaotic_current, "amplitude")
    timescale: float = Field(default_of(chaotic_current, "timescale"), gt=0)


class InputsConfig(ConfigSection):
    """`data.inputs`: the driving inputs of a driven model ([`deepest.Inputs`][]), from a
    `.csv` (times, then one column per signal) or `.npy`/`.npz` `file` (relative to the
    working folder), or a `chaotic` current made on the spot."""

    file: str | None = None
    chaotic: ChaoticCurrentConfig | None = None
    interpolation: Literal["linear", "cubic"] = "linear"

    @pydantic.model_validator(mode="after")
    def _one_source(self):
        if (self.file is None) == (self.chaotic is None):
            raise ValueError("`data.inputs` takes one of `file` and `chaotic`.")
        return self

    def build(self):
        from .._data import Inputs

        if self.file is not None:
            return Inputs.load(self.file, interpolation=self.interpolation)
        c = self.chaotic
        times = c.dt * np.arange(round(c.t1 / c.dt) + 1)
        options = c.model_dump(exclude={"t1", "dt"})
        return chaotic_current(times, interpolation=self.interpolation, **options)


class DataConfig(ConfigSection):
    """`data`: observations from a file (`Observations.save`), or a twin experiment; the
    `inputs` that drive the model (twin and problem alike), if it takes any."""

    file: str | None = None
    twin: TwinConfig = TwinConfig()
    inputs: InputsConfig | None = None


def _discretisation_names() -> list[str]:
    from ..discretisations import DISCRETISATIONS

    return [d.name for d in DISCRETISATIONS]


class ProblemConfig(ConfigSection):
    """`problem`: the [`deepest.Assimilation`][] arguments (`rm` defaults to 1/noise²)."""

    rm: Any = None
    discretisation: str = default_of(Assimilation, "discretisation")
    steps_per_obs: int = Field(default_of(Assimilation, "steps_per_obs"), ge=1)
    estimate: list[str] = []
    initial_params: dict[str, Any] = {}
    state_range: list[float] | list[list[float]] = list(default_of(Assimilation, "state_range"))
    param_ranges: dict[str, list[float]] = {}
    bounds: dict[str, list[float]] | Literal["model"] = {}
    state_bounds: list[list[float] | None] | Literal["model"] | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _renamed(cls, values):
        return renamed_keys(values, "problem", discretization="discretisation")

    @pydantic.field_validator("discretisation")
    @classmethod
    def _known(cls, name):
        names = _discretisation_names()
        if name not in names:
            raise ValueError(
                f"`problem.discretisation` must be one of {', '.join(map(repr, names))}; "
                f"got {name!r}.{did_you_mean(name, names)}"
            )
        return name

    @pydantic.model_validator(mode="after")
    def _values(self):
        for name, value in self.initial_params.items():
            numbers(f"problem.initial_params.{name}", value)
        if self.state_range and isinstance(self.state_range[0], list):
            for i, pair in enumerate(self.state_range):
                interval(f"problem.state_range[{i}]", pair)
        else:
            interval("problem.state_range", self.state_range)
        for name, value in self.param_ranges.items():
            interval(f"problem.param_ranges.{name}", value)
        if isinstance(self.bounds, dict):
            for name, value in self.bounds.items():
                interval(f"problem.bounds.{name}", value)
        if isinstance(self.state_bounds, list):
            for i, pair in enumerate(self.state_bounds):
                if pair is not None:
                    interval(f"problem.state_bounds[{i}]", pair)
        return self

    def boxes(self, model) -> tuple[dict, list | None]:
        """(`bounds`, `state_bounds`) as the library takes them: `model` reads the model
        class's own boxes (e.g. `NaKL.bounds`), the parameter boxes kept to `estimate`."""
        bounds = getattr(model, "bounds", {}) if self.bounds == "model" else self.bounds
        bounds = {k: tuple(v) for k, v in bounds.items() if k in self.estimate}
        state = getattr(model, "state_bounds", None) if self.state_bounds == "model" else None
        if isinstance(self.state_bounds, list):
            state = [None if b is None else tuple(b) for b in self.state_bounds]
        return bounds, state


class RunSection(ConfigSection):
    """The settings of [`deepest.anneal`][] a config's `anneal` section holds besides the
    schedule's start (defaults: the library's)."""

    alpha: float = 2.0
    n_beta: int = 31
    n_paths: int = Field(16, ge=1)
    seed: int = Field(1, ge=0)
    ftol: float | None = Field(default_of(anneal, "ftol"), ge=0)
    gtol: float | None = Field(default_of(anneal, "gtol"), ge=0)
    max_evaluations: int = Field(default_of(anneal, "max_evaluations"), ge=1)
    minimiser: str = "lbfgs"
    history_length: int = default_of(LBFGS, "history_length")
    dtype: Literal["float64", "float32"] = "float64"
    group_size: int | None = Field(default_of(anneal, "group_size"), ge=1)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, values):
        # `max_steps`, the former name of `max_evaluations`: deprecated
        return renamed_keys(values, "anneal", max_steps="max_evaluations")

    def schedule(self, rf0=None) -> AnnealSchedule:
        """The [`deepest.AnnealSchedule`][] from `rf0` (default: the section's own), checked
        by it (messages name `anneal.*`)."""
        rf0 = getattr(self, "rf0", None) if rf0 is None else rf0
        return library_check(
            "anneal",
            ("rf0", "alpha", "n_beta"),
            lambda: AnnealSchedule(np.asarray(rf0, dtype=float), self.alpha, self.n_beta),
        )

    def minimiser_object(self):
        """The minimiser `anneal.minimiser` names, given the `anneal` keys that are its fields."""
        cls = lookup("anneal.minimiser", self.minimiser, MINIMISERS)
        fields = [f for f in _arguments(cls) if f in type(self).model_fields]
        return library_check("anneal", fields, lambda: cls(**{f: getattr(self, f) for f in fields}))

    def run_options(self, output: "OutputConfig | None" = None) -> dict:
        """The keyword arguments of [`deepest.anneal`][] and [`deepest.sweep`][] this section
        (and `output`) set."""
        import jax.numpy as jnp

        options = {
            "ftol": self.ftol,
            "gtol": self.gtol,
            "max_evaluations": self.max_evaluations,
            "minimiser": self.minimiser_object(),
            "dtype": jnp.dtype(self.dtype),
            "group_size": self.group_size,
        }
        if output is not None:
            options.update(save_betas=output.save_betas, checkpoint_every=output.checkpoint_every)
        return options


class AnnealSection(RunSection):
    """`anneal`: the schedule R_f = rf0·alpha^β (β < n_beta), the paths, the minimiser
    (`lbfgs` takes `history_length`, `levenberg_marquardt` takes `damping`) and the
    settings of [`deepest.anneal`][] (defaults: the library's)."""

    rf0: Any = 1e-6
    damping: float = default_of(LevenbergMarquardt, "damping")


def _arguments(cls) -> list[str]:
    import inspect

    return list(inspect.signature(cls).parameters)


class OutputConfig(ConfigSection):
    """`output`: the forecast horizon of the summary, the β's whose paths are kept, and the
    checkpoint interval of a long run."""

    forecast_horizon: float = Field(1.0, ge=0)
    save_betas: list[pydantic.NonNegativeInt] = []
    checkpoint_every: float = Field(default_of(anneal, "checkpoint_every"), gt=0)


class AnnealSetup(NamedTuple):
    """What an anneal config builds."""

    problem: Assimilation
    schedule: AnnealSchedule
    data: Observations
    true_model: Any


class AnnealConfig(ConfigSection):
    """A `deepest anneal` experiment: model, data, problem, anneal, output.

    Example:

        config = deepest.experiments.load("configs/lorenz96_L12.yaml", ["anneal.n_paths=4"])
        problem, schedule, data, true_model = config.build()
        result = deepest.anneal(problem, schedule, config.anneal.n_paths, config.key(),
                                **config.run_options())
    """

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    problem: ProblemConfig = ProblemConfig()
    anneal: AnnealSection = AnnealSection()
    output: OutputConfig = OutputConfig()

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        from ..models import check_estimate, parametrised

        dim, data, problem, twin = self.model.dim, self.data, self.problem, self.data.twin
        if data.inputs is not None and data.inputs.file and not os.path.isfile(data.inputs.file):
            raise ValueError(f"`data.inputs.file`: no such file: {data.inputs.file!r}.")
        if data.file is not None:
            if not os.path.isfile(data.file):
                raise ValueError(f"`data.file`: no such file: {data.file!r}.")
            if problem.rm is None:
                raise ValueError("Set `problem.rm` (1/σ² of the data in `data.file`).")
            n_observed = None
        else:
            if twin.observed is None:
                raise ValueError(
                    "Set `data.twin.observed` (the measured components) or `data.file`."
                )
            _indices("data.twin.observed", twin.observed, dim)
            check_twin_memory(dim, twin.n_times, twin.dt, twin.spinup, "`data.twin.n_times`")
            n_observed = len(twin.observed)
            if problem.rm is None:
                # A twin experiment with no noise has no 1/σ² to weigh it by: set `problem.rm`.
                if not twin.noise > 0:
                    raise ValueError(f"`data.twin.noise` must be a number > 0; got {twin.noise!r}.")
                problem.rm = 1.0 / twin.noise**2
        numbers("problem.rm", problem.rm, 0.0, n_observed)
        numbers("anneal.rf0", self.anneal.rf0, size=dim)  # its sign: AnnealSchedule checks
        n_beta = self.anneal.schedule().n_beta
        self.anneal.minimiser_object()
        beta_indices("output.save_betas", self.output.save_betas, n_beta)
        model = self.model.build(problem.initial_params)
        try:
            check_estimate(problem.estimate, parametrised(model)[1])
        except ValueError as e:
            raise ValueError(f"`problem.estimate`: {e}") from None
        if data.file is None:
            model.check_dim(dim)
        return self

    def build(self) -> AnnealSetup:
        """The problem, schedule, data and true model (the twin's generator) of this config."""
        data, true_model, inputs = self.build_data()
        problem = Assimilation(data=data, **self.problem_arguments(inputs))
        return AnnealSetup(problem, self.anneal.schedule(), data, true_model)

    def build_data(self) -> tuple[Observations, Any, Any]:
        """The data (from `data.file` or the twin experiment), the true model (the twin's
        generator) and the inputs that drive the model (None for an undriven one)."""
        import jax.random as jr

        true_model = self.model.build()
        inputs = None if self.data.inputs is None else self.data.inputs.build()
        if self.data.file is not None:
            return Observations.load(self.data.file), true_model, inputs
        twin = self.data.twin
        data = twin_experiment(
            true_model,
            self.model.dim,
            twin.n_times,
            twin.dt,
            twin.observed,
            twin.noise,
            jr.key(twin.seed),
            spinup=twin.spinup,
            substeps=twin.substeps,
            x0=None if twin.x0 is None else np.asarray(twin.x0, dtype=float),
            inputs=inputs,
        )
        return data, true_model, inputs

    def problem_arguments(self, inputs=None) -> dict:
        """The arguments of [`deepest.Assimilation`][] but the data that the `model` and
        `problem` sections set (those [`deepest.cycle`][] takes too), with the driving
        `inputs`."""
        p = self.problem
        model = self.model.build(p.initial_params)
        bounds, state_bounds = p.boxes(model)
        state_range = p.state_range
        state_range = (
            tuple(map(tuple, state_range))
            if isinstance(state_range[0], list)
            else tuple(state_range)
        )
        return dict(
            model=model,
            rm=np.asarray(p.rm, dtype=float),
            dim=self.model.dim,
            discretisation=p.discretisation,
            steps_per_obs=p.steps_per_obs,
            estimate=tuple(p.estimate),
            state_range=state_range,
            param_ranges={k: tuple(v) for k, v in p.param_ranges.items()},
            bounds=bounds,
            state_bounds=state_bounds,
            inputs=inputs,
        )

    def key(self):
        """The PRNG key of the paths' initial draws (`anneal.seed`)."""
        import jax.random as jr

        return jr.key(self.anneal.seed)

    def run_options(self) -> dict:
        """The keyword arguments of [`deepest.anneal`][] this config sets (tolerances, step
        limit, minimiser, dtype, saved β's, checkpoint interval)."""
        return self.anneal.run_options(self.output)

    def run(self, problem=None, schedule=None, **kwargs):
        """[`deepest.anneal`][] of this config's problem (or `problem`, `schedule` already
        built), with its settings; `kwargs` go to `anneal` (progress, checkpoint, resume)."""
        if problem is None:
            problem, schedule, _, _ = self.build()
        options = {**self.run_options(), **kwargs}
        return anneal(problem, schedule, self.anneal.n_paths, self.key(), **options)


def _indices(key: str, value: list[int], size: int) -> None:
    if not value:
        raise ValueError(f"`{key}` must be a non-empty list of component indices; got [].")
    for i in value:
        if not 0 <= i < size:
            raise ValueError(f"`{key}` has index {i}, out of range [0, {size}).")
    repeated = sorted({i for i in value if value.count(i) > 1})
    if repeated:
        raise ValueError(f"`{key}` repeats the indices {repeated}.")
