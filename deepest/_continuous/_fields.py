"""The vector fields of continuous layers: plain fields and piecewise-constant ones."""

import inspect
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, PyTree


class PiecewiseConstant(eqx.Module):
    """A vector field whose parameters switch at equal time slices.

    On slice k of [0, T] (t ∈ [kT/S, (k+1)T/S), S = `n_slices`) the field is the k-th
    member of a stack of S fields of one architecture. Used as the `field` of a
    [`deepest.ContinuousNetwork`][], which integrates each slice as its own segment, so
    a slice boundary is always a step boundary (`n_steps` must be a multiple of S).

    **Arguments:**

    - `field`: either a function `key -> module` (each slice initialised with its own
        key, e.g. `lambda k: eqx.nn.MLP(4, 4, 16, 2, key=k)`), or a module (every slice
        starts as a copy of it).
    - `n_slices`: the number of slices S ≥ 1.
    - `key`: a PRNG key; required with a function, unused with a module.

    **Example:**

    ```python
    field = deepest.PiecewiseConstant(lambda k: eqx.nn.MLP(2, 2, 32, 1, key=k), 4, key)
    net = deepest.ContinuousNetwork(field, t1=1.0, n_steps=40)
    ```
    """

    fields: PyTree
    n_slices: int = eqx.field(static=True)

    def __init__(
        self,
        field: eqx.Module | Callable[[PRNGKeyArray], eqx.Module],
        n_slices: int,
        key: PRNGKeyArray | None = None,
    ):
        if not isinstance(n_slices, int) or n_slices < 1:
            raise ValueError(f"`n_slices` must be a positive integer; got {n_slices!r}.")
        if isinstance(field, eqx.Module):
            self.fields = jax.tree.map(
                lambda a: jnp.broadcast_to(a, (n_slices, *a.shape)) if eqx.is_array(a) else a,
                field,
            )
        elif callable(field):
            if key is None:
                raise ValueError(
                    "Pass a PRNG `key` to initialise one field per slice from the "
                    "function `field(key)`."
                )
            self.fields = eqx.filter_vmap(field)(jr.split(key, n_slices))
        else:
            raise TypeError(
                "`field` must be an Equinox module or a function key -> module; "
                f"got {type(field).__name__}."
            )
        self.n_slices = n_slices

    def slice(self, k: int) -> eqx.Module:
        """The field on slice `k`."""
        return jax.tree.map(lambda a: a[k] if eqx.is_array(a) else a, self.fields)


def as_pieces(field: eqx.Module) -> PiecewiseConstant:
    """`field` as a [`deepest.PiecewiseConstant`][]: a plain field is one slice.

    The stacked `fields` are what a continuous network scans over, one slice at a time;
    gradients with respect to them are pulled back to `field` through this map.
    """
    return field if isinstance(field, PiecewiseConstant) else PiecewiseConstant(field, 1)


def takes_time(field: Callable) -> bool:
    """Whether `field` is called as `field(t, x)` (True) or `field(x)` (False)."""
    try:
        parameters = inspect.signature(field).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    variadic = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    return variadic or len(positional) >= 2


class TimeField(eqx.Module):
    """A field presented as a field of (t, x), the form the solvers call.

    **Arguments:**

    - `field`: the module, called as `field(t, x)` or, for a field of x alone, `field(x)`.
    - `takes_time`: which of the two (see `takes_time`).
    """

    field: eqx.Module
    takes_time: bool = eqx.field(static=True)

    def __call__(self, t: Float[Array, ""], x: Float[Array, " dim"]) -> Float[Array, " dim"]:
        return self.field(t, x) if self.takes_time else self.field(x)
