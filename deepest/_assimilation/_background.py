"""A Gaussian background (prior) on the first state of an assimilation window."""

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._data import concrete


class Background(eqx.Module):
    r"""A Gaussian prior N(x_b, B) on the first state of a window, and optionally on the
    estimated parameters: the background of variational data assimilation.

    Given to [`deepest.Assimilation`][] as `background=`, it adds

    $$\tfrac12 (z − x_b)^\top B^{-1} (z − x_b) = \tfrac12 \lvert L^{-1}(z − x_b) \rvert^2,
      \qquad B = L L^\top,$$

    to the unnormalised action A₀, where z is the window's first state x₀ (D entries) or
    x₀ followed by the estimated parameters θ (flattened in `estimate` order, as reported:
    bounded ones in their box), as `mean` has D or D + p entries.

    Give B in exactly one of three forms: the matrix `cov`, its lower Cholesky factor
    `chol`, or its diagonal `diag` (variances).

    **Arguments:**

    - `mean`: x_b, shape (n,), finite.
    - `cov`: B, shape (n, n), symmetric positive definite.
    - `chol`: L, shape (n, n), lower triangular with a positive diagonal (B = L·Lᵀ).
    - `diag`: the variances of a diagonal B, shape (n,), positive.

    Values are checked when concrete (not traced).

    **Example:**

        background = deepest.Background(x_b, cov=B)
        problem = deepest.Assimilation(model, data, rm=1.0, background=background)
    """

    mean: Float[Array, " n"]
    factor: Float[Array, " n"] | Float[Array, "n n"]

    def __init__(
        self,
        mean: ArrayLike,
        cov: ArrayLike | None = None,
        *,
        chol: ArrayLike | None = None,
        diag: ArrayLike | None = None,
    ):
        dtype = jnp.result_type(float)
        mean = jnp.asarray(mean, dtype)
        if mean.ndim != 1 or mean.size == 0:
            raise ValueError(f"`mean` must be a vector (n,); got shape {mean.shape}.")
        known = concrete(mean)
        if known is not None and not np.all(np.isfinite(known)):
            raise ValueError(f"`mean` must be finite; got {known}.")
        given = [
            name for name, v in (("cov", cov), ("chol", chol), ("diag", diag)) if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "Give the background covariance B as exactly one of `cov`, `chol` or `diag`; "
                f"got {', '.join(f'`{g}`' for g in given) or 'none'}."
            )
        n = mean.size
        if diag is not None:
            diag = _shaped(diag, "diag", (n,), dtype)
            known = concrete(diag)
            if known is not None and (not np.all(np.isfinite(known)) or np.any(known <= 0)):
                raise ValueError(
                    f"`diag` (the variances) must be positive and finite; got {known}."
                )
            factor = jnp.sqrt(diag)
        elif chol is not None:
            factor = _shaped(chol, "chol", (n, n), dtype)
            known = concrete(factor)
            if known is not None:
                if not np.all(np.isfinite(known)):
                    raise ValueError("`chol` must be finite.")
                if np.any(np.triu(known, 1) != 0):
                    raise ValueError("`chol` must be lower triangular (B = L·Lᵀ).")
                if np.any(np.diag(known) <= 0):
                    raise ValueError(
                        "`chol` must have a positive diagonal (B = L·Lᵀ positive definite); "
                        f"got {np.diag(known)}."
                    )
        else:
            cov = _shaped(cov, "cov", (n, n), dtype)
            known = concrete(cov)
            if known is not None:
                if not np.all(np.isfinite(known)):
                    raise ValueError("`cov` must be finite.")
                size = np.max(np.abs(known))
                if not np.allclose(known, known.T, rtol=0, atol=1e-10 * size):
                    raise ValueError("`cov` must be symmetric.")
                try:
                    np.linalg.cholesky((known + known.T) / 2)
                except np.linalg.LinAlgError:
                    raise ValueError("`cov` must be positive definite.") from None
            factor = jnp.linalg.cholesky((cov + cov.T) / 2)
        self.mean = mean
        self.factor = factor

    @property
    def size(self) -> int:
        """n, the number of entries the prior is on."""
        return self.mean.size

    @property
    def covariance(self) -> Float[Array, "n n"]:
        """B, dense."""
        if self.factor.ndim == 1:
            return jnp.diag(self.factor**2)
        return self.factor @ self.factor.T

    def whiten(self, z: Float[Array, " n"]) -> Float[Array, " n"]:
        """L⁻¹(z − x_b), whose squared norm is (z − x_b)ᵀB⁻¹(z − x_b) (a triangular
        solve, or a division for a diagonal B)."""
        if self.factor.ndim == 1:
            return (z - self.mean) / self.factor
        return jsl.solve_triangular(self.factor, z - self.mean, lower=True)


def _shaped(value: ArrayLike, name: str, shape: tuple[int, ...], dtype) -> Array:
    value = jnp.asarray(value, dtype)
    if value.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape} (from `mean`); got {value.shape}.")
    return value
