"""Discretisations of an [`deepest.Assimilation`][]'s model term, one Module per scheme.

`Assimilation(discretisation=...)` takes one of these or its `name`; `DISCRETISATIONS`
holds one of each.
"""

from ._assimilation._discretisation import (
    _RENAMES,
    DISCRETISATIONS as DISCRETISATIONS,
    RK4 as RK4,
    AbstractDiscretisation as AbstractDiscretisation,
    Euler as Euler,
    GaussLegendre as GaussLegendre,
    SimpsonHermite as SimpsonHermite,
    Trapezoid as Trapezoid,
    as_discretisation as as_discretisation,
)
from ._misc import deprecated_alias as _deprecated_alias


def __getattr__(name):
    # `AbstractDiscretization`, `DISCRETIZATIONS`, `as_discretization`: deprecated
    return _deprecated_alias(__name__, name, _RENAMES)
