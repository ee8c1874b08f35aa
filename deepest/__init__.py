"""deepest: machine learning as statistical data assimilation, in JAX."""
# ruff: noqa: I001 (the public API is grouped by science, not sorted)

from . import (
    annealing as annealing,
    discretisations as discretisations,
    integrators as integrators,
    minimisers as minimisers,
    models as models,
)

from ._annealing import package_version as _package_version

__version__ = _package_version()

# -- one failure vocabulary, and results that own their files --
from ._results import AbstractResult as AbstractResult, RESULTS as RESULTS

# -- data: observations, twin experiments, training sets --
from ._data import (
    FlowMap as FlowMap,
    Inputs as Inputs,
    chaotic_current as chaotic_current,
    Observations as Observations,
    bar_images as bar_images,
    integrate as integrate,
    noisy_pairs as noisy_pairs,
    standardised_inputs as standardised_inputs,
    twin_experiment as twin_experiment,
    twin_generator as twin_generator,
)

# -- neuroscience outputs: spikes and their timing --
from ._neuro import (
    coincidence_factor as coincidence_factor,
    plot_neuron as plot_neuron,
    spike_times as spike_times,
)

# -- the actions: assimilation, network training, the continuous action --
from ._assimilation import (
    AbstractTraining as AbstractTraining,
    Assimilation as Assimilation,
    Background as Background,
    ContinuousAssimilation as ContinuousAssimilation,
    Epochs as Epochs,
    LayeredTraining as LayeredTraining,
    RecurrentTraining as RecurrentTraining,
    training as training,
    discrete_weights as discrete_weights,
    residual_network as residual_network,
    train_continuous as train_continuous,
)

# -- variational annealing and its minimisers --
from ._annealing import (
    AbstractBandedProblem as AbstractBandedProblem,
    AbstractProgressMeter as AbstractProgressMeter,
    NoProgressMeter as NoProgressMeter,
    TqdmProgressMeter as TqdmProgressMeter,
    save_result as save_result,
    AbstractMinimiser as AbstractMinimiser,
    AbstractProblem as AbstractProblem,
    AnnealResult as AnnealResult,
    SweepResult as SweepResult,
    AnnealSchedule as AnnealSchedule,
    LBFGS as LBFGS,
    LevenbergMarquardt as LevenbergMarquardt,
    anneal as anneal,
    sweep as sweep,
    load_result as load_result,
    plot_action_levels as plot_action_levels,
    plot_estimates as plot_estimates,
    solve_block_tridiagonal as solve_block_tridiagonal,
)

# -- statistical data assimilation: uncertainty (Laplace, precision annealing Monte Carlo) --
from ._uncertainty import (
    LaplaceResult as LaplaceResult,
    PAMCResult as PAMCResult,
    SelectedInverse as SelectedInverse,
    laplace as laplace,
    pamc as pamc,
    plot_expected_action as plot_expected_action,
    plot_uncertainty as plot_uncertainty,
    selected_inversion as selected_inversion,
)

# -- cycled assimilation: window after window, the Laplace Gaussian carried forward --
from ._cycling import CycleResult as CycleResult, cycle as cycle

# -- networks, the costate sweep (backpropagation), training --
from ._networks import (
    AbstractCostateNetwork as AbstractCostateNetwork,
    CostateVJP as CostateVJP,
    FitHistory as FitHistory,
    LayeredNetwork as LayeredNetwork,
    RecurrentNetwork as RecurrentNetwork,
    costate_grad as costate_grad,
    costate_sweep as costate_sweep,
    costate_value_and_grad as costate_value_and_grad,
    costate_vjp as costate_vjp,
    fit as fit,
)

# -- continuous networks (deepest learning) and their integrators --
from ._continuous import (
    AbstractAdjoint as AbstractAdjoint,
    AutodiffAdjoint as AutodiffAdjoint,
    ContinuousNetwork as ContinuousNetwork,
    CostateAdjoint as CostateAdjoint,
    PiecewiseConstant as PiecewiseConstant,
    ReversibleAdjoint as ReversibleAdjoint,
)
from .integrators import partner_sweep as partner_sweep

# -- Hamiltonian mechanics and two-point boundary-value problems --
from ._mechanics import (
    Legendre as Legendre,
    QuadraticLagrangian as QuadraticLagrangian,
    euler_lagrange as euler_lagrange,
    hamiltonian_field as hamiltonian_field,
    legendre as legendre,
)
from ._boundary_value import (
    AbstractAnnealableBoundaryValueProblem as AbstractAnnealableBoundaryValueProblem,
    AbstractBoundaryValueProblem as AbstractBoundaryValueProblem,
    AbstractTPBVPMethod as AbstractTPBVPMethod,
    BoundaryValueProblem as BoundaryValueProblem,
    Collocation as Collocation,
    MultipleShooting as MultipleShooting,
    Shooting as Shooting,
    TPBVPSolution as TPBVPSolution,
    anneal_tpbvp as anneal_tpbvp,
    solve_tpbvp as solve_tpbvp,
)


def __getattr__(name):
    # Deprecated names, each with its warning: `StopReason` (the codes of an
    # AnnealResult are `result`, deepest.RESULTS, and `converged_by`), `TPBVPResults`
    # (deepest.RESULTS), `discretizations` (deepest.discretisations), `Training`
    # (deepest.training).
    if name == "discretizations":  # deprecated: importing it warns
        import importlib

        return importlib.import_module(".discretizations", __name__)
    if name == "Training":  # deprecated: deepest.training, a function
        from ._misc import deprecated_alias

        return deprecated_alias(__name__, name, {name: ("deepest.training", training)})
    if name in ("StopReason", "TPBVPResults"):
        from ._annealing._solution import StopCode
        from ._misc import deprecated_alias

        renames = {
            "StopReason": ("AnnealResult.result (deepest.RESULTS) and .converged_by", StopCode),
            "TPBVPResults": ("deepest.RESULTS", RESULTS),
        }
        return deprecated_alias(__name__, name, renames)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
