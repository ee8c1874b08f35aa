"""The annealing schedule: the model weights R_f = rf0 · α^β."""

import equinox as eqx
import numpy as np
from jaxtyping import Array, ArrayLike, Float


class AnnealSchedule(eqx.Module):
    """The annealing schedule R_f = rf0 · α^β for β = 0, 1, …, n_beta − 1.

    **Arguments:**

    - `rf0`: the initial model weight (> 0), a scalar or one value per model component.
    - `alpha`: the growth factor α > 1.
    - `n_beta`: the number of β values (≥ 1).
    """

    rf0: Float[Array, "*dim"]
    alpha: float = eqx.field(static=True)
    n_beta: int = eqx.field(static=True)

    def __init__(self, rf0: ArrayLike, alpha: float, n_beta: int):
        rf0_np = np.asarray(rf0, dtype=float)
        if not np.all(np.isfinite(rf0_np)) or np.any(rf0_np <= 0):
            raise ValueError(f"`rf0` must be positive and finite; got {rf0}.")
        if not np.isfinite(alpha) or alpha <= 1:
            raise ValueError(f"`alpha` must be greater than 1; got {alpha}.")
        if int(n_beta) != n_beta or n_beta < 1:
            raise ValueError(f"`n_beta` must be a positive integer; got {n_beta}.")
        self.rf0 = rf0_np
        self.alpha = float(alpha)
        self.n_beta = int(n_beta)

    @property
    def rf(self) -> np.ndarray:
        """The model weights R_f, shape (n_beta,) or (n_beta, dim)."""
        beta = np.arange(self.n_beta).reshape((-1,) + (1,) * self.rf0.ndim)
        return self.rf0 * self.alpha**beta
