"""Experiments described by config files and built from the public API (`deepest.experiments`)."""

from ._anneal import (
    MINIMISERS as MINIMISERS,
    MODELS as MODELS,
    AnnealConfig as AnnealConfig,
    AnnealSection as AnnealSection,
    AnnealSetup as AnnealSetup,
    DataConfig as DataConfig,
    ModelConfig as ModelConfig,
    OutputConfig as OutputConfig,
    ProblemConfig as ProblemConfig,
    TwinConfig as TwinConfig,
)
from ._base import differences as differences, read_yaml as read_yaml
from ._continuous import (
    CONTINUOUS_EXPERIMENTS as CONTINUOUS_EXPERIMENTS,
    SOLVERS as SOLVERS,
    ContinuousClassifierConfig as ContinuousClassifierConfig,
    ContinuousTwinConfig as ContinuousTwinConfig,
    Lorenz96ContinuousConfig as Lorenz96ContinuousConfig,
)
from ._cycle import (
    BackgroundConfig as BackgroundConfig,
    CycleConfig as CycleConfig,
    CycleSection as CycleSection,
)
from ._load import KINDS as KINDS, kind_of as kind_of, load as load, resolve as resolve
from ._pamc import PAMCConfig as PAMCConfig, PAMCSection as PAMCSection
from ._sweep import SweepConfig as SweepConfig, SweepPoint as SweepPoint
from ._train import (
    TRAIN_EXPERIMENTS as TRAIN_EXPERIMENTS,
    BarImagesConfig as BarImagesConfig,
    DepthResolutionConfig as DepthResolutionConfig,
    TrainConfig as TrainConfig,
    errors_of as errors_of,
    mean_baseline as mean_baseline,
    train_by_annealing as train_by_annealing,
    train_by_backprop as train_by_backprop,
)
