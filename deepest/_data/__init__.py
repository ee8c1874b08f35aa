"""Observations, twin experiments and training sets."""

from ._datasets import (
    BAR_POSITIONS as BAR_POSITIONS,
    TWIN_VARIANTS as TWIN_VARIANTS,
    FlowMap as FlowMap,
    bar_images as bar_images,
    check_bar_settings as check_bar_settings,
    noisy_pairs as noisy_pairs,
    standardised_inputs as standardised_inputs,
    twin_generator as twin_generator,
)
from ._inputs import Inputs as Inputs
from ._stimulus import chaotic_current as chaotic_current
from ._twin import (
    Observations as Observations,
    check_dimension as check_dimension,
    check_equal_spacing as check_equal_spacing,
    check_twin_memory as check_twin_memory,
    concrete as concrete,
    integrate as integrate,
    twin_experiment as twin_experiment,
)
