"""Integrators for Hamiltonian systems and for the costate of continuous networks.

The symplectic schemes are diffrax solvers for a state `(x, p)` whose vector field returns
`(ẋ, ṗ)`; see [`deepest.integrators.AbstractSymplecticSolver`][].
"""

from ._symplectic import (
    AbstractSymplecticSolver as AbstractSymplecticSolver,
    ImplicitMidpoint as ImplicitMidpoint,
    StormerVerlet as StormerVerlet,
    SymplecticEuler as SymplecticEuler,
    SymplecticGaussLegendre as SymplecticGaussLegendre,
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
    ClassicalRK4 as ClassicalRK4,
    linearise_increment as linearise_increment,
    linearise_stages as linearise_stages,
    partner_step as partner_step,
    partner_sweep as partner_sweep,
    partner_tableau as partner_tableau,
    rk_increment as rk_increment,
    stages_parameter_vjp as stages_parameter_vjp,
    tableau_coefficients as tableau_coefficients,
)


def __getattr__(name):
    # deprecated names, each with its warning: `RK4` and `GaussLegendre` (the action
    # discretisations of deepest.discretisations have those names)
    from .._misc import deprecated_alias

    return deprecated_alias(
        __name__,
        name,
        {
            "RK4": ("deepest.integrators.ClassicalRK4", ClassicalRK4),
            "GaussLegendre": (
                "deepest.integrators.SymplecticGaussLegendre",
                SymplecticGaussLegendre,
            ),
        },
    )
