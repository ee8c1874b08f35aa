"""Small helpers shared by every subpackage: argument checks, dtypes, pytrees."""

import difflib
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

# A point of phase space: positions and momenta, each a pytree of arrays.
Pair = tuple[PyTree[Array], PyTree[Array]]


def positive_int(value, name: str) -> int:
    """`value` as an `int`, or `ValueError` naming `name` if it is not a positive integer."""
    try:
        ok = int(value) == value and value >= 1 and not isinstance(value, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """ " Did you mean 'x'?" for the option nearest to `name`, or "" if none is near."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def default_float(dtype=None) -> jnp.dtype:
    """`dtype`, or JAX's default float dtype (float64 under `jax_enable_x64`) if None."""
    return jnp.dtype(dtype) if dtype is not None else jnp.result_type(float)


def is_concrete(tree) -> bool:
    """True if no leaf of `tree` is a tracer (values can be checked in Python)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jtu.tree_leaves(tree))


def tree_where(pred, a, b):
    """`jnp.where(pred, a, b)` leaf by leaf over two pytrees of the same structure."""
    return jtu.tree_map(lambda u, v: jnp.where(pred, u, v), a, b)
