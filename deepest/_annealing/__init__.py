"""Variational annealing: problems, the `anneal` entry, its loop, minimisers and solution."""

from ._anneal import (
    AnnealResult as AnnealResult,
    AnnealSchedule as AnnealSchedule,
    StopReason as StopReason,
    anneal as anneal,
    load_result as load_result,
)
from ._minimiser import (
    LBFGS as LBFGS,
    AbstractMinimiser as AbstractMinimiser,
    LevenbergMarquardt as LevenbergMarquardt,
    solve_block_tridiagonal as solve_block_tridiagonal,
)
from ._plot import plot_action_levels as plot_action_levels, plot_estimates as plot_estimates
from ._problem import AbstractProblem as AbstractProblem
