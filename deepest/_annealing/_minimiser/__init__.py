"""Minimisers that step many paths (lanes) at once inside the annealing loop."""

from ._base import AbstractMinimiser as AbstractMinimiser, StepInfo as StepInfo
from ._compact import (
    CompactLBFGS as CompactLBFGS,
    Schedule as Schedule,
    TridiagonalPreconditioner as TridiagonalPreconditioner,
    compact_direction as compact_direction,
)
from ._lbfgs import LBFGS as LBFGS
from ._levenberg_marquardt import (
    LevenbergMarquardt as LevenbergMarquardt,
    banded_normal_equations as banded_normal_equations,
    solve_block_tridiagonal as solve_block_tridiagonal,
    solve_by_elimination as solve_by_elimination,
)
