"""Dynamical models dx/dt = F(t, x, θ)."""

from ._base import (
    AbstractModel as AbstractModel,
    check_estimate as check_estimate,
    check_field as check_field,
    parametrised as parametrised,
)
from ._lorenz import Lorenz63 as Lorenz63, Lorenz96 as Lorenz96
