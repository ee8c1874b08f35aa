"""Dynamical models dx/dt = F(t, x, θ)."""

from ._base import (
    AbstractDrivenModel as AbstractDrivenModel,
    AbstractModel as AbstractModel,
    check_estimate as check_estimate,
    check_field as check_field,
    parametrised as parametrised,
    takes_input as takes_input,
)
from ._lorenz import Lorenz63 as Lorenz63, Lorenz96 as Lorenz96
from ._neuron import (
    HodgkinHuxley as HodgkinHuxley,
    NaKL as NaKL,
    hodgkin_huxley_rates as hodgkin_huxley_rates,
)
