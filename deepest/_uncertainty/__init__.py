"""Statistical data assimilation: uncertainty on every estimate, by the Laplace
approximation at annealed minima and by precision annealing Monte Carlo."""

from ._laplace import LaplaceResult as LaplaceResult, laplace as laplace
from ._pamc import PAMCResult as PAMCResult, pamc as pamc
from ._plot import (
    plot_expected_action as plot_expected_action,
    plot_uncertainty as plot_uncertainty,
)
from ._selected_inversion import (
    SelectedInverse as SelectedInverse,
    selected_inversion as selected_inversion,
)
