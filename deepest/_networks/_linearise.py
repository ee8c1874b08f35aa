"""Per-layer linearisation with shared residuals: the forward half of the costate sweep.

The forward pass linearises one layer map at a time with `jax.vjp` and stores each layer's
VJP residuals; the backward sweep replays them from the output layer down, carrying λ.
Residuals that are just the layer's own weights (or its input data) are not stored again:
the backward sweep reads them from the weights themselves, so the sweep keeps what
reverse-mode autodiff keeps and recomputes nothing.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.tree_util as jtu
from jaxtyping import Array, PyTree


def linearise(
    fn: Callable, params: PyTree, data: PyTree, x: PyTree
) -> tuple[PyTree, list[Array], tuple]:
    """`fn(params, data, x)` and its VJP in `(params, x)`, the VJP split for storage.

    Returns `(y, stored, spec)`: the residual arrays that are not leaves of `(params, data)`,
    and a static `spec` with which `rebuild` puts the VJP back together from `stored` and
    the same `(params, data)`. Leaves are recognised by identity, which holds for arrays the
    linearisation keeps as they are (a dense layer's weight matrix, an input sequence).
    """
    y, vjp_fn = jax.vjp(lambda p, x: fn(p, data, x), params, x)
    leaves, treedef = jtu.tree_flatten(vjp_fn)
    known = {id(leaf): i for i, leaf in enumerate(jtu.tree_leaves((params, data)))}
    where = tuple(known.get(id(leaf)) for leaf in leaves)
    stored = [leaf for leaf, w in zip(leaves, where, strict=True) if w is None]
    return y, stored, (treedef, where)


def rebuild(stored: list[Array], spec: tuple, params: PyTree, data: PyTree) -> Callable:
    """The VJP function split by `linearise`, rebuilt from its parts."""
    treedef, where = spec
    known = jtu.tree_leaves((params, data))
    stored = iter(stored)
    return jtu.tree_unflatten(treedef, [next(stored) if w is None else known[w] for w in where])


def split_layer(layer: PyTree) -> tuple[PyTree, PyTree, PyTree]:
    """(differentiable arrays, other arrays, non-arrays) of a layer."""
    dynamic, static = eqx.partition(layer, eqx.is_array)
    diff, nondiff = eqx.partition(dynamic, eqx.is_inexact_array)
    return diff, nondiff, static
