"""The checks of a problem's weights, for concrete and traced values alike."""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from .._data import Observations, concrete


def check_weight(
    value: ArrayLike, name: str, shapes: tuple[tuple[int, ...], ...], description: str
) -> Array:
    """`value` as a float array, checked to have one of `shapes` (else the error says it
    must be `description`) and, when concrete (not traced), to be positive and finite."""
    value = jnp.asarray(value, jnp.result_type(float))
    if value.shape not in shapes:
        raise ValueError(f"`{name}` must be {description}; got shape {value.shape}.")
    known = concrete(value)
    if known is not None and (not np.all(np.isfinite(known)) or np.any(known <= 0)):
        raise ValueError(f"`{name}` must be positive and finite; got {known}.")
    return value


def check_rm(rm: ArrayLike, data: Observations) -> Array:
    """R_m of an assimilation of `data`: a scalar or one value per observed component."""
    n = len(data.observed)
    return check_weight(rm, "rm", ((), (n,)), f"a scalar or one value per observed component ({n})")


def check_interval(name: str, pair) -> tuple[float, float]:
    """`pair` as finite floats (low, high) with low < high, or a `ValueError` naming `name`."""
    try:
        low, high = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a pair (low, high) of numbers; got {pair!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"`{name}` must be (low, high), finite, with low < high; got {pair!r}.")
    return low, high
