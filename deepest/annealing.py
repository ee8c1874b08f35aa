"""The parts of [`deepest.anneal`][]: its compiled loop, progress meters and solution files.

The loop runs in chunks: `init_loop` gives its state before the first step, `prepare_loop`
what its lanes share (made once per run), `advance_loop`
(filter-jitted: one program per problem structure, shapes and settings, whose traces
`equinox.debug.get_num_traces(advance_loop)` counts) runs it a chunk further, and
`loop_records` reads the records off it; `save_checkpoint` and `load_checkpoint` write and
read that state exactly. `anneal_lanes` is the same loop as one program (no chunks), the
reference of the chunks' overhead in `benchmarks/bench_long_runs.py`.
"""

from ._annealing import (
    CHECKPOINT as CHECKPOINT,
    INTERRUPT as INTERRUPT,
    AbstractBandedProblem as AbstractBandedProblem,
    AbstractProgressMeter as AbstractProgressMeter,
    Block as Block,
    LoopConfig as LoopConfig,
    LoopState as LoopState,
    NoProgressMeter as NoProgressMeter,
    TqdmProgressMeter as TqdmProgressMeter,
    advance_loop as advance_loop,
    anneal_lanes as anneal_lanes,
    init_loop as init_loop,
    load_checkpoint as load_checkpoint,
    load_result as load_result,
    loop_finished as loop_finished,
    loop_records as loop_records,
    package_version as package_version,
    prepare_loop as prepare_loop,
    save_checkpoint as save_checkpoint,
    save_result as save_result,
)
