"""Two-point boundary-value problems: problem, methods, solution, `solve_tpbvp`."""

from ._tpbvp import (
    AbstractBoundaryValueProblem as AbstractBoundaryValueProblem,
    AbstractTPBVPMethod as AbstractTPBVPMethod,
    BoundaryValueProblem as BoundaryValueProblem,
    Collocation as Collocation,
    MultipleShooting as MultipleShooting,
    Shooting as Shooting,
    TPBVPResults as TPBVPResults,
    TPBVPSolution as TPBVPSolution,
    anneal_tpbvp as anneal_tpbvp,
    solve_tpbvp as solve_tpbvp,
)
