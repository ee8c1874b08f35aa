"""Experiments from config files: typed configs, built into the library's objects.

`load(path, overrides)` reads a YAML experiment (`deepest anneal|pamc|train|sweep|cycle`), checks
every key (each error names its dotted key; an unknown key or name gets the nearest valid
one; a YAML error names file:line:column) and returns its config; `build()` (anneal, pamc)
gives the problem, schedule, data and true model, `run_options()` the settings of
[`deepest.anneal`][]. Defaults are read from the library's signatures. Validation by
pydantic.

    import deepest.experiments as dx

    config = dx.load("configs/lorenz96_L12.yaml", ["anneal.n_paths=4"])
    problem, schedule, data, true_model = config.build()
    result = config.run(problem, schedule, progress=False)
"""

from ._experiments import (
    CONTINUOUS_EXPERIMENTS as CONTINUOUS_EXPERIMENTS,
    KINDS as KINDS,
    MINIMISERS as MINIMISERS,
    MODELS as MODELS,
    SOLVERS as SOLVERS,
    TRAIN_EXPERIMENTS as TRAIN_EXPERIMENTS,
    AnnealConfig as AnnealConfig,
    AnnealSection as AnnealSection,
    AnnealSetup as AnnealSetup,
    BarImagesConfig as BarImagesConfig,
    ContinuousClassifierConfig as ContinuousClassifierConfig,
    ContinuousTwinConfig as ContinuousTwinConfig,
    CycleConfig as CycleConfig,
    CycleSection as CycleSection,
    DataConfig as DataConfig,
    DepthResolutionConfig as DepthResolutionConfig,
    Lorenz96ContinuousConfig as Lorenz96ContinuousConfig,
    ModelConfig as ModelConfig,
    OutputConfig as OutputConfig,
    PAMCConfig as PAMCConfig,
    PAMCSection as PAMCSection,
    ProblemConfig as ProblemConfig,
    SweepConfig as SweepConfig,
    SweepPoint as SweepPoint,
    TrainConfig as TrainConfig,
    TwinConfig as TwinConfig,
    differences as differences,
    errors_of as errors_of,
    kind_of as kind_of,
    load as load,
    mean_baseline as mean_baseline,
    read_yaml as read_yaml,
    resolve as resolve,
    train_by_annealing as train_by_annealing,
    train_by_backprop as train_by_backprop,
)
