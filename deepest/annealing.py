"""The parts of [`deepest.anneal`][]: its compiled loop, progress meters and solution files.

`anneal_lanes` is the filter-jitted loop every run goes through: one program per problem
structure, shapes and settings, whose traces `equinox.debug.get_num_traces(anneal_lanes)`
counts.
"""

from ._annealing import (
    AbstractBandedProblem as AbstractBandedProblem,
    AbstractProgressMeter as AbstractProgressMeter,
    LoopConfig as LoopConfig,
    NoProgressMeter as NoProgressMeter,
    TqdmProgressMeter as TqdmProgressMeter,
    anneal_lanes as anneal_lanes,
    load_result as load_result,
    save_result as save_result,
)
