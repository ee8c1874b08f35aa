"""Variational annealing: problems, the `anneal` entry, its loop, minimisers and solution."""

from ._anneal import anneal as anneal
from ._checkpoint import (
    CHECKPOINT as CHECKPOINT,
    check_fingerprints as check_fingerprints,
    load_checkpoint as load_checkpoint,
    package_version as package_version,
    problem_digest as problem_digest,
    save_checkpoint as save_checkpoint,
)
from ._loop import (
    LoopConfig as LoopConfig,
    LoopState as LoopState,
    advance_loop as advance_loop,
    anneal_lanes as anneal_lanes,
    init_loop as init_loop,
    loop_finished as loop_finished,
    loop_records as loop_records,
    prepare_loop as prepare_loop,
)
from ._minimiser import (
    LBFGS as LBFGS,
    AbstractMinimiser as AbstractMinimiser,
    CompactLBFGS as CompactLBFGS,
    LevenbergMarquardt as LevenbergMarquardt,
    Schedule as Schedule,
    StepInfo as StepInfo,
    TridiagonalPreconditioner as TridiagonalPreconditioner,
    banded_normal_equations as banded_normal_equations,
    compact_direction as compact_direction,
    solve_block_tridiagonal as solve_block_tridiagonal,
    solve_by_elimination as solve_by_elimination,
)
from ._plot import plot_action_levels as plot_action_levels, plot_estimates as plot_estimates
from ._problem import (
    AbstractBandedProblem as AbstractBandedProblem,
    AbstractProblem as AbstractProblem,
    Block as Block,
    unnormalised_scale as unnormalised_scale,
)
from ._progress import (
    AbstractProgressMeter as AbstractProgressMeter,
    NoProgressMeter as NoProgressMeter,
    TqdmProgressMeter as TqdmProgressMeter,
)
from ._runner import INTERRUPT as INTERRUPT, Interruption as Interruption
from ._schedule import AnnealSchedule as AnnealSchedule
from ._solution import (
    AnnealResult as AnnealResult,
    StopCode as StopCode,
    SweepResult as SweepResult,
    load_result as load_result,
    save_result as save_result,
)
from ._sweep import sweep as sweep
