"""The discretisations of a boundary-value problem: shooting and collocation."""

from ._base import AbstractTPBVPMethod as AbstractTPBVPMethod
from ._shooting import MultipleShooting as MultipleShooting, Shooting as Shooting
from .collocation import Collocation as Collocation
