"""Deprecated: the American spelling of [`deepest.discretisations`][]; importing it warns.

Its names are those of `deepest.discretisations`, with the deprecated
`AbstractDiscretization`, `DISCRETIZATIONS` and `as_discretization`.
"""

import warnings

from ._assimilation._discretisation import _RENAMES
from ._misc import deprecated_alias as _deprecated_alias
from .discretisations import (
    DISCRETISATIONS as DISCRETISATIONS,
    RK4 as RK4,
    AbstractDiscretisation as AbstractDiscretisation,
    Euler as Euler,
    GaussLegendre as GaussLegendre,
    SimpsonHermite as SimpsonHermite,
    Trapezoid as Trapezoid,
    as_discretisation as as_discretisation,
)

warnings.warn(
    "`deepest.discretizations` is deprecated; use `deepest.discretisations`.",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name):
    # `AbstractDiscretization`, `DISCRETIZATIONS`, `as_discretization`: deprecated
    return _deprecated_alias(__name__, name, _RENAMES)
