"""The minimisers of [`deepest.anneal`][] and their parts.

[`deepest.LBFGS`][] and [`deepest.LevenbergMarquardt`][] are also at the top level; here
are the protocol every minimiser implements (`AbstractMinimiser`, whose `step` returns a
`StepInfo`: a minimiser of your own plugs into [`deepest.anneal`][] through it) and the
pieces the two are built from, each usable (and tested) on its own: the compact
L-BFGS of many lanes (`CompactLBFGS`, its direction `compact_direction`, the shared
`Schedule` and `TridiagonalPreconditioner`) and the banded linear algebra of
Levenberg–Marquardt (`banded_normal_equations`, `solve_by_elimination`,
`solve_block_tridiagonal`).
"""

from ._annealing._minimiser import (
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
