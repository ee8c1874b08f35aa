"""Actions: state and parameter estimation, network training, and the continuous action."""

from ._assimilation import Assimilation as Assimilation
from ._continuous import (
    ContinuousAssimilation as ContinuousAssimilation,
    discrete_weights as discrete_weights,
    residual_network as residual_network,
    train_continuous as train_continuous,
)
from ._discretization import (
    AbstractDiscretization as AbstractDiscretization,
    as_discretization as as_discretization,
)
from ._training import (
    AbstractTraining as AbstractTraining,
    LayeredTraining as LayeredTraining,
    RecurrentTraining as RecurrentTraining,
    Training as Training,
)
