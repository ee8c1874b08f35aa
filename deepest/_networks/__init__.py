"""Layered and recurrent networks, their costate sweep, and training by backpropagation."""

from ._costate import (
    CostateVJP as CostateVJP,
    costate_grad as costate_grad,
    costate_sweep as costate_sweep,
    costate_value_and_grad as costate_value_and_grad,
    costate_vjp as costate_vjp,
)
from ._fit import FitHistory as FitHistory, fit as fit
from ._layered import LayeredNetwork as LayeredNetwork
from ._protocol import AbstractCostateNetwork as AbstractCostateNetwork
from ._recurrent import RecurrentNetwork as RecurrentNetwork
