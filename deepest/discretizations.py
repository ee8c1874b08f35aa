"""Discretisations of an [`deepest.Assimilation`][]'s model term, one Module per scheme.

`Assimilation(discretization=...)` takes one of these or its `name`; `DISCRETIZATIONS`
holds one of each.
"""

from ._assimilation._discretization import (
    DISCRETIZATIONS as DISCRETIZATIONS,
    RK4 as RK4,
    AbstractDiscretization as AbstractDiscretization,
    Euler as Euler,
    GaussLegendre as GaussLegendre,
    SimpsonHermite as SimpsonHermite,
    Trapezoid as Trapezoid,
    as_discretization as as_discretization,
)
