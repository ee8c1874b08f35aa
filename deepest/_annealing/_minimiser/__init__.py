"""Minimisers that step many paths (lanes) at once inside the annealing loop."""

from ._compact import (
    CompactLBFGS as CompactLBFGS,
    Schedule as Schedule,
    StepInfo as StepInfo,
    TridiagonalPreconditioner as TridiagonalPreconditioner,
)
from ._lbfgs import LBFGS as LBFGS, AbstractMinimiser as AbstractMinimiser
from ._levenberg_marquardt import (
    LevenbergMarquardt as LevenbergMarquardt,
    solve_block_tridiagonal as solve_block_tridiagonal,
)
