"""Cycled assimilation: window after window, each window's Laplace Gaussian the background
of a later one."""

from ._cycle import cycle as cycle
from ._solution import CycleResult as CycleResult
