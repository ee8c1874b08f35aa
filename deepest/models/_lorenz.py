"""The Lorenz-96 and Lorenz-63 systems."""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._base import AbstractModel


class Lorenz96(AbstractModel):
    """Lorenz (1996): dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + forcing, indices mod D.

    Defined for any dimension D ≥ 4. `forcing` may be estimated
    (`deepest.Assimilation(..., estimate=("forcing",))`).

    **Arguments:**

    - `forcing`: the constant forcing F (8.17 in varanneal's example).
    """

    forcing: Float[ArrayLike, ""] = 8.17

    def __call__(self, t: ArrayLike, x: Float[Array, " dim"]) -> Float[Array, " dim"]:
        del t
        # x_{i+1}, x_{i−2}, x_{i−1} as slices of one wrapped copy (three rolls cost XLA:CPU
        # a fifth more in the Jacobians of a window)
        n = x.shape[-1]
        wrapped = jnp.concatenate([x[..., -2:], x, x[..., :1]], axis=-1)
        return (wrapped[..., 3:] - wrapped[..., :n]) * wrapped[..., 1 : n + 1] - x + self.forcing

    def check_dim(self, dim: int) -> None:
        if dim < 4:
            raise ValueError(f"Lorenz96 needs at least 4 components; got dim={dim}.")


class Lorenz63(AbstractModel):
    """Lorenz (1963): ẋ = σ(y − x), ẏ = x(ρ − z) − y, ż = xy − βz.

    **Arguments:**

    - `sigma`, `rho`, `beta`: the classic parameters (10, 28, 8/3 by default).
    """

    sigma: Float[ArrayLike, ""] = 10.0
    rho: Float[ArrayLike, ""] = 28.0
    beta: Float[ArrayLike, ""] = 8.0 / 3.0

    def __call__(self, t: ArrayLike, x: Float[Array, " 3"]) -> Float[Array, " 3"]:
        del t
        u, v, w = x[..., 0], x[..., 1], x[..., 2]
        return jnp.stack(
            [self.sigma * (v - u), u * (self.rho - w) - v, u * v - self.beta * w], axis=-1
        )

    def check_dim(self, dim: int) -> None:
        if dim != 3:
            raise ValueError(f"Lorenz63 has exactly 3 components; got dim={dim}.")
