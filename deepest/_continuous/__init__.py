"""Networks with a continuous layer label, and their adjoints."""

from ._network import (
    ContinuousNetwork as ContinuousNetwork,
    PiecewiseConstant as PiecewiseConstant,
)
