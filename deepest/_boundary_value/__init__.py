r"""Two-point boundary value problems of Hamiltonian type, solved with diffrax and optimistix.

A problem is a first-order system for the pair y = (x, p) on [t_0, t_1],

    ẏ = f(t, y),   b(y(t_0), y(t_1)) = 0,   y(τ_k⁺) = J_k(y(τ_k⁻)) at interior nodes τ_k,

with 2·dim boundary conditions b and explicit jump maps J_k (interior measurements). Three
methods turn it into one square nonlinear system solved by Newton's method (the shooting
methods by `optimistix.root_find` with lineax LU; collocation with a structured linear solve),
differentiable with respect to the problem's arrays through the implicit function theorem
(one Newton step with the Jacobian frozen, taken at the root):

- [`deepest.MultipleShooting`][]: unknowns y at segment starts, segments integrated with a
  diffrax solver (vmapped); residuals are continuity (after the jumps) and boundary conditions.
- [`deepest.Shooting`][]: one unknown y(t_0), integrated across the whole interval.
- [`deepest.Collocation`][]: the Lobatto IIIA–IIIB pair (3 stages, order 4, symplectic) with
  nodes and stages as unknowns, its Newton system solved with its block structure, and
  residual-controlled mesh refinement on a fixed maximal mesh with masking.

Array shapes are static: the shooting methods cut each interval between consecutive nodes
(t_0, the τ_k, t_1) into the same number of equal pieces, collocation keeps a maximal mesh of
which a traced number of nodes is active; so the node *times* may be traced (vmap over problems
with different observation times) while the shapes stay fixed.

Layout: `_problem.py` (the problems), `_solution.py` (the solution and its dense output;
its codes are [`deepest.RESULTS`][]), `_solve.py` (the entry points), `_method/` (the
family of methods: each implements its own `solve`).
"""

from ._method import (
    AbstractTPBVPMethod as AbstractTPBVPMethod,
    Collocation as Collocation,
    MultipleShooting as MultipleShooting,
    Shooting as Shooting,
)
from ._problem import (
    AbstractAnnealableBoundaryValueProblem as AbstractAnnealableBoundaryValueProblem,
    AbstractBoundaryValueProblem as AbstractBoundaryValueProblem,
    BoundaryValueProblem as BoundaryValueProblem,
)
from ._solution import TPBVPSolution as TPBVPSolution
from ._solve import anneal_tpbvp as anneal_tpbvp, solve_tpbvp as solve_tpbvp
