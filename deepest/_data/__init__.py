"""Observations, twin experiments and training sets."""

from ._datasets import (
    FlowMap as FlowMap,
    bar_images as bar_images,
    noisy_pairs as noisy_pairs,
    standardised_inputs as standardised_inputs,
    twin_generator as twin_generator,
)
from ._twin import (
    Observations as Observations,
    check_dimension as check_dimension,
    concrete as concrete,
    integrate as integrate,
    twin_experiment as twin_experiment,
)
