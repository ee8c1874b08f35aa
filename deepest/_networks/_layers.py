"""The building blocks of the discrete networks: dense layers, initialisers, stacking."""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

Initialiser = str | Callable[[PRNGKeyArray, tuple[int, ...], jnp.dtype], Array]


def initialise(init: Initialiser, key, shape, dtype, fan_in: int, name: str) -> Array:
    """An initial weight array of `shape` by the scheme `init` (see `LayeredNetwork`)."""
    if callable(init):
        value = jnp.asarray(init(key, shape, dtype), dtype)
        if value.shape != shape:
            raise ValueError(f"`{name}` returned shape {value.shape}; expected {shape}.")
        return value
    if init == "normal":
        return jr.normal(key, shape, dtype) / np.sqrt(fan_in)
    if init == "uniform":
        bound = 1 / np.sqrt(fan_in)
        return jr.uniform(key, shape, dtype, -bound, bound)
    if init == "zeros":
        return jnp.zeros(shape, dtype)
    raise ValueError(
        f"`{name}` must be 'normal' (N(0, 1/fan_in)), 'uniform' (U(±1/√fan_in)), 'zeros', or "
        f"a function (key, shape, dtype) -> array; got {init!r}."
    )


def check_callable(value, name="activation", example="jnp.tanh"):
    """`TypeError` naming `name` unless `value` is callable."""
    if not callable(value):
        raise TypeError(f"`{name}` must be callable, e.g. {example}; got {value!r}.")


class Function(eqx.Module):
    """A plain function as a layer (e.g. an activation), held static: it has no weights."""

    fn: Callable = eqx.field(static=True)

    def __call__(self, x):
        return self.fn(x)


class Dense(eqx.Module):
    """x ↦ σ(W x + b)."""

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"] | None
    activation: Callable = eqx.field(static=True)

    def __call__(self, x):
        z = self.weight @ x
        if self.bias is not None:
            z = z + self.bias
        return self.activation(z)


class Linear(eqx.Module):
    """h ↦ W h + b."""

    weight: Float[Array, "out state"]
    bias: Float[Array, " out"] | None

    def __call__(self, h):
        y = self.weight @ h
        return y if self.bias is None else y + self.bias


def stackable(a, b) -> bool:
    """Whether two layers differ only in the values of their arrays."""
    leaves_a, tree_a = jtu.tree_flatten(a)
    leaves_b, tree_b = jtu.tree_flatten(b)
    if tree_a != tree_b:
        return False
    for u, v in zip(leaves_a, leaves_b, strict=True):
        if eqx.is_array(u) != eqx.is_array(v):
            return False
        if eqx.is_array(u):
            if u.shape != v.shape or u.dtype != v.dtype:
                return False
        elif u is not v and u != v:
            return False
    return True


def stack(layers):
    """One layer whose arrays carry a leading axis over `layers` (all `stackable`)."""
    dynamic = [eqx.partition(layer, eqx.is_array)[0] for layer in layers]
    static = eqx.partition(layers[0], eqx.is_array)[1]
    return eqx.combine(jtu.tree_map(lambda *xs: jnp.stack(xs), *dynamic), static)


def segments(layers) -> tuple[tuple, tuple[int, ...]]:
    """Runs of consecutive `stackable` layers, each stacked: `(layers, stack_lengths)`."""
    runs = []
    for layer in layers:
        if runs and stackable(runs[-1][0], layer):
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return tuple(r[0] if len(r) == 1 else stack(r) for r in runs), tuple(len(r) for r in runs)
