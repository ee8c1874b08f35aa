"""Models dx/dt = F(t, x, θ), and the parameter plumbing that names θ for estimation."""

import abc
import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._misc import did_you_mean


class AbstractModel(eqx.Module):
    """A vector field dx/dt = F(t, x) whose parameters are the module's array fields.

    Subclasses implement `__call__(t, x)`; their floating-point fields are the parameters
    that `estimate=(...)` may name. `check_dim(dim)` raises if the model cannot have `dim`
    components.
    """

    @abc.abstractmethod
    def __call__(self, t: ArrayLike, x: Float[Array, " dim"]) -> Float[Array, " dim"]:
        """The vector field at time `t` and state `x`."""

    def check_dim(self, dim: int) -> None:  # noqa: B027
        """Raise `ValueError` if the model is not defined for `dim` components."""

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """The names of the model's parameters (its array-like fields)."""
        return tuple(
            f.name for f in dataclasses.fields(self) if not f.metadata.get("static", False)
        )


class AbstractDrivenModel(AbstractModel):
    """A vector field dx/dt = F(t, x, u(t)) driven by known inputs u (e.g. an injected
    current), given to [`deepest.Assimilation`][] as `inputs=` (a [`deepest.Inputs`][]).

    Subclasses implement `__call__(t, x, u)` with u of shape (`n_inputs`,), and may give
    `bounds` ({parameter: (low, high)}) and `state_bounds` ((low, high) per component): the
    boxes their parameters and states live in, which configs and examples use.
    """

    n_inputs: ClassVar[int] = 1
    bounds: ClassVar[dict[str, tuple[float, float]]] = {}
    state_bounds: ClassVar[tuple[tuple[float, float], ...] | None] = None

    @abc.abstractmethod
    def __call__(
        self, t: ArrayLike, x: Float[Array, " dim"], u: Float[Array, " n_inputs"]
    ) -> Float[Array, " dim"]:
        """The vector field at time `t`, state `x` and input `u`."""


class _WithParams(eqx.Module):
    """A user callable `F(t, x, params)` with a dict of named parameter values."""

    fn: Callable = eqx.field(static=True)
    params: dict[str, Array]

    def __call__(self, t, x, theta, *u):
        return self.fn(t, x, {**self.params, **theta}, *u)

    def parameters(self):
        """What the user passed as the parameters: the dict `params`."""
        return self.params


class _WithoutParams(eqx.Module):
    """A user callable `F(t, x)` with no parameters."""

    fn: Callable = eqx.field(static=True)

    def __call__(self, t, x, theta):
        return self.fn(t, x)

    def parameters(self):
        """What the user passed as the parameters: none."""
        return {}


class _ModuleWithParams(eqx.Module):
    model: AbstractModel

    def parameters(self):
        """What the user passed as the parameters: the module itself."""
        return self.model

    def __call__(self, t, x, theta, *u):
        names = tuple(theta)
        if names:
            model = eqx.tree_at(
                lambda m: tuple(getattr(m, n) for n in names),
                self.model,
                tuple(theta[n] for n in names),
            )
        else:
            model = self.model
        return model(t, x, *u)


def parametrised(
    model: AbstractModel | eqx.Module | Callable,
    params: Mapping[str, ArrayLike] | None = None,
) -> tuple[Callable, dict[str, Array]]:
    """Normalise a model to `field(t, x, theta)` (`field(t, x, theta, u)` for a driven
    one, see `takes_input`) plus the values of its named parameters.

    `theta` is a dict holding the parameters being estimated; the others keep their values.

    **Arguments:**

    - `model`: an [`deepest.models.AbstractModel`][] (its fields are the parameters), any
      Equinox module called as `model(t, x)` or, driven, `model(t, x, u)` (its float
      fields are the parameters), a callable `F(t, x, params)` with `params` a dict (driven:
      `F(t, x, params, u)`), or a callable `F(t, x)` (no parameters).
    - `params`: the parameter values of a callable model (not allowed for a module).

    **Returns:** `(field, values)`, with `field(t, x, theta)` and `values` a dict of arrays.
    """
    if isinstance(model, eqx.Module) and params is None:
        values = {
            name: jnp.asarray(getattr(model, name))
            for name in model.__dataclass_fields__
            if not model.__dataclass_fields__[name].metadata.get("static", False)
            and _is_inexact(getattr(model, name))
        }
        return _ModuleWithParams(model), values
    if not callable(model):
        raise TypeError(f"A model must be callable as F(t, x) or F(t, x, params); got {model!r}.")
    required = _required_positional(model)
    if required not in (None, 2, 3, 4):
        raise TypeError(
            "A model must be callable as F(t, x), F(t, x, params) or, driven by inputs, "
            f"F(t, x, params, u); {_name(model)} takes "
            f"{required} required positional argument{'s' if required != 1 else ''}."
        )
    if required == 2:
        if params:
            raise ValueError(
                "A model called as F(t, x) takes no `params`; write F(t, x, params) to "
                "estimate parameters."
            )
        return _WithoutParams(model), {}
    values = {name: jnp.asarray(v) for name, v in dict(params or {}).items()}
    return _WithParams(model, values), values


def takes_input(model) -> bool:
    """Whether `model` is driven, i.e. called with an input u: an
    [`deepest.models.AbstractDrivenModel`][], a module whose `__call__` requires three
    positional arguments `(t, x, u)`, or a callable requiring four, `F(t, x, params, u)`."""
    if isinstance(model, AbstractDrivenModel):
        return True
    if isinstance(model, eqx.Module):
        return _required_positional(model.__call__) == 3
    return _required_positional(model) == 4


def _name(fn) -> str:
    """`fn`'s name and signature, for messages: `f(x)`."""
    try:
        return f"{getattr(fn, '__name__', type(fn).__name__)}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return repr(fn)


def _is_inexact(x) -> bool:
    """Whether a field holds a floating-point parameter: a float array (traced ones too,
    which `eqx.is_inexact_array_like` cannot read) or a Python/NumPy float."""
    return eqx.is_inexact_array(x) or (
        not isinstance(x, jax.core.Tracer) and eqx.is_inexact_array_like(x)
    )


def _required_positional(fn) -> int | None:
    """How many positional arguments `fn` requires (None if it cannot be told)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    arguments = signature.parameters.values()
    if any(a.kind is inspect.Parameter.VAR_POSITIONAL for a in arguments):
        return None
    return sum(a.kind in kinds and a.default is inspect.Parameter.empty for a in arguments)


def check_field(field: Callable, dim: int, dtype, n_inputs: int | None = None) -> None:
    """Check once, without computing (`jax.eval_shape`), that `field(t, x, {})` (driven:
    `field(t, x, {}, u)` with u of shape (n_inputs,)) maps a state of shape (dim,) to a
    floating-point vector of the same shape; an error names what was expected and what
    came back."""
    x = jax.ShapeDtypeStruct((dim,), dtype)
    t = jax.ShapeDtypeStruct((), dtype)
    u = () if n_inputs is None else (jax.ShapeDtypeStruct((n_inputs,), dtype),)
    call = "F(t, x)" if n_inputs is None else f"F(t, x, u) with u of shape ({n_inputs},)"
    try:
        out = jax.eval_shape(lambda t, x, *u: field(t, x, {}, *u), t, x, *u)
    except Exception as e:  # the model's own error, said to be the model's
        raise ValueError(
            f"The model failed when called as {call} with x of shape ({dim},) and dtype "
            f"{jnp.dtype(dtype)}: {type(e).__name__}: {e}"
        ) from e
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape != (dim,) or dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        got = f"shape {shape} and dtype {dtype}" if shape is not None else repr(out)
        raise ValueError(
            f"The model must return dx/dt of shape ({dim},) (a float array, one entry per "
            f"component) for a state x of shape ({dim},); it returned {got}."
        )


def check_estimate(estimate: Sequence[str], values: Mapping[str, Array]) -> tuple[str, ...]:
    """Check that every name in `estimate` is a parameter, once; return it as a tuple."""
    estimate = (estimate,) if isinstance(estimate, str) else tuple(estimate)
    for name in estimate:
        if name not in values:
            hint = did_you_mean(name, values)
            raise ValueError(
                f"Cannot estimate unknown parameter {name!r}; the model's parameters are "
                f"{sorted(values)}.{hint}"
            )
    if len(set(estimate)) != len(estimate):
        raise ValueError(f"`estimate` names a parameter twice: {estimate}.")
    return estimate
