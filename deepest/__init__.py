"""deepest: machine learning as statistical data assimilation, in JAX."""
# ruff: noqa: I001 (the public API is grouped by topic, not sorted)

from . import models as models
from ._data import (
    Observations as Observations,
    integrate as integrate,
    twin_experiment as twin_experiment,
)
from ._problem import AbstractProblem as AbstractProblem

# -- foundation: assimilation and annealing (issue 2) --
from ._anneal import (
    AnnealResult as AnnealResult,
    AnnealSchedule as AnnealSchedule,
    StopReason as StopReason,
    anneal as anneal,
    load_result as load_result,
)
from ._assimilation import Assimilation as Assimilation
from ._minimisers import AbstractMinimiser as AbstractMinimiser, LBFGS as LBFGS
from ._levenberg_marquardt import (
    LevenbergMarquardt as LevenbergMarquardt,
    solve_block_tridiagonal as solve_block_tridiagonal,
)
from ._plot import plot_action_levels as plot_action_levels, plot_estimates as plot_estimates

# -- layered networks, costate sweep, training (issue 3) --
from ._costate import (
    CostateVJP as CostateVJP,
    costate_grad as costate_grad,
    costate_sweep as costate_sweep,
    costate_value_and_grad as costate_value_and_grad,
    costate_vjp as costate_vjp,
)
from ._fit import FitHistory as FitHistory, fit as fit
from ._networks import LayeredNetwork as LayeredNetwork, RecurrentNetwork as RecurrentNetwork
from ._datasets import (
    FlowMap as FlowMap,
    bar_images as bar_images,
    noisy_pairs as noisy_pairs,
    standardised_inputs as standardised_inputs,
    twin_generator as twin_generator,
)
from ._training import Training as Training

# -- continuous networks and integrators (issue 4) --
from . import integrators as integrators
from ._continuous import (
    ContinuousNetwork as ContinuousNetwork,
    PiecewiseConstant as PiecewiseConstant,
)
from .integrators import partner_sweep as partner_sweep

# -- mechanics and boundary-value problems (issue 5) --
from ._continuous_assimilation import (
    ContinuousAssimilation as ContinuousAssimilation,
    discrete_weights as discrete_weights,
    residual_network as residual_network,
    train_continuous as train_continuous,
)
from ._mechanics import (
    Legendre as Legendre,
    QuadraticLagrangian as QuadraticLagrangian,
    euler_lagrange as euler_lagrange,
    hamiltonian_field as hamiltonian_field,
    legendre as legendre,
)
from ._tpbvp import (
    AbstractBoundaryValueProblem as AbstractBoundaryValueProblem,
    AbstractTPBVPMethod as AbstractTPBVPMethod,
    BoundaryValueProblem as BoundaryValueProblem,
    Collocation as Collocation,
    MultipleShooting as MultipleShooting,
    Shooting as Shooting,
    TPBVPResults as TPBVPResults,
    TPBVPSolution as TPBVPSolution,
    anneal_tpbvp as anneal_tpbvp,
    solve_tpbvp as solve_tpbvp,
)
