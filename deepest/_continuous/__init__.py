"""Networks with a continuous layer label, and their adjoints."""

from ._adjoint import (
    AbstractAdjoint as AbstractAdjoint,
    AutodiffAdjoint as AutodiffAdjoint,
    CostateAdjoint as CostateAdjoint,
    ReversibleAdjoint as ReversibleAdjoint,
)
from ._fields import (
    PiecewiseConstant as PiecewiseConstant,
    TimeField as TimeField,
    takes_time as takes_time,
)
from ._network import ContinuousNetwork as ContinuousNetwork
