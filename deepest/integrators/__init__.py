"""Integrators for Hamiltonian systems and for the costate of continuous networks.

The symplectic schemes are diffrax solvers for a state `(x, p)` whose vector field returns
`(ẋ, ṗ)`; see [`deepest.integrators.AbstractSymplecticSolver`][].
"""

from ._symplectic import (
    AbstractSymplecticSolver as AbstractSymplecticSolver,
    GaussLegendre as GaussLegendre,
    ImplicitMidpoint as ImplicitMidpoint,
    StormerVerlet as StormerVerlet,
    SymplecticEuler as SymplecticEuler,
    gauss_legendre_tableau as gauss_legendre_tableau,
)

# isort: split
# -- part B: tableaux, partner, reversible --
from ._reversible import (
    ReversibleRK as ReversibleRK,
    reversible_step as reversible_step,
    reversible_step_back as reversible_step_back,
)
from ._tableaux import (
    RK4 as RK4,
    linearise_increment as linearise_increment,
    partner_step as partner_step,
    partner_sweep as partner_sweep,
    partner_tableau as partner_tableau,
    rk_increment as rk_increment,
    tableau_coefficients as tableau_coefficients,
)
