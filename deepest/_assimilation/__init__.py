"""Actions: state and parameter estimation, network training, and the continuous action."""

from ._assimilation import Assimilation as Assimilation
from ._background import Background as Background
from ._continuous import (
    ContinuousAssimilation as ContinuousAssimilation,
    discrete_weights as discrete_weights,
    residual_network as residual_network,
    train_continuous as train_continuous,
)
from ._discretisation import (
    AbstractDiscretisation as AbstractDiscretisation,
    as_discretisation as as_discretisation,
)
from ._epochs import Epochs as Epochs
from ._training import (
    AbstractTraining as AbstractTraining,
    LayeredTraining as LayeredTraining,
    RecurrentTraining as RecurrentTraining,
    training as training,
)
