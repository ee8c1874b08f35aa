"""The checks of a problem's weights, boxes and inputs, for concrete and traced values alike."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from .._data import Inputs, Observations, concrete
from ..models import AbstractDrivenModel, takes_input


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


def check_box(name: str, pair) -> tuple[float, float]:
    """`pair` as floats (low, high) with low < high, either side possibly infinite (no
    bound there), or a `ValueError` naming `name`."""
    try:
        low, high = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a pair (low, high) of numbers; got {pair!r}.") from None
    if np.isnan(low) or np.isnan(high) or not low < high:
        raise ValueError(
            f"`{name}` must be (low, high) with low < high (±inf for a side without a "
            f"bound); got {pair!r}."
        )
    return low, high


def _is_pair(value) -> bool:
    return (
        isinstance(value, (tuple, list, np.ndarray))
        and len(value) == 2
        and all(np.ndim(v) == 0 and not isinstance(v, (tuple, list)) for v in value)
    )


def component_boxes(name: str, value, dim: int) -> tuple[tuple[float, float], ...] | None:
    """Per-component boxes from `value`: `None` (no box), D entries each (low, high) or
    `None`, or {component: (low, high)}; `None` when no side of any box is finite."""
    if value is None:
        return None
    free = (-np.inf, np.inf)
    if isinstance(value, Mapping):
        boxes = [free] * dim
        for key, pair in value.items():
            if not isinstance(key, (int, np.integer)) or not 0 <= key < dim:
                raise ValueError(
                    f"`{name}` names component {key!r}; the model has {dim} (0…{dim - 1})."
                )
            boxes[int(key)] = check_box(f"{name}[{key}]", pair)
    else:
        entries = list(value)
        if len(entries) != dim:
            raise ValueError(
                f"`{name}` must give one (low, high) or None per component ({dim}), or "
                f"{{component: (low, high)}}; got {len(entries)} entries."
            )
        boxes = [free if e is None else check_box(f"{name}[{i}]", e) for i, e in enumerate(entries)]
    if all(b == free for b in boxes):
        return None
    return tuple(boxes)


def cut_range(name: str, pair, box, where: str) -> tuple[float, float]:
    """The starting range `pair` cut to the `box`; a `ValueError` if nothing is left."""
    low, high = max(pair[0], box[0]), min(pair[1], box[1])
    if not low < high:
        raise ValueError(f"{name} {tuple(pair)} lies outside its {where} {tuple(box)}.")
    return float(low), float(high)


def state_draw_ranges(state_range, box, dim: int) -> tuple[tuple[float, float], ...]:
    """The range of each component's starting draws: `state_range` (one pair, or one per
    component), cut to the component's box."""
    if _is_pair(state_range):
        ranges = [check_interval("state_range", state_range)] * dim
    else:
        entries = list(state_range) if isinstance(state_range, (tuple, list)) else None
        if entries is None or len(entries) != dim:
            raise ValueError(
                f"`state_range` must be one (low, high) for every component, or one per "
                f"component ({dim}); got {state_range!r}."
            )
        ranges = [check_interval(f"state_range[{i}]", e) for i, e in enumerate(entries)]
    box = box or ((-np.inf, np.inf),) * dim
    return tuple(
        cut_range(f"`state_range` of component {i}", r, b, "`state_bounds`")
        for i, (r, b) in enumerate(zip(ranges, box))
    )


def check_inputs(model, inputs, times) -> Inputs | None:
    """Check that a model driven by an input gets `inputs` (a [`deepest.Inputs`][]) and a
    model that takes none gets none, and that the inputs cover the window's `times`
    (concrete) and have as many signals as a driven model declares."""
    driven = takes_input(model)
    if inputs is None:
        if driven:
            raise ValueError(
                "The model takes a driving input u (it is called as model(t, x, u) or "
                "F(t, x, params, u)); pass `inputs=deepest.Inputs(times, values)`."
            )
        return None
    if not isinstance(inputs, Inputs):
        raise TypeError(f"`inputs` must be a deepest.Inputs; got {type(inputs).__name__}.")
    if not driven:
        raise ValueError(
            "`inputs` were given, but the model takes none: write it as model(t, x, u) (a "
            "module, e.g. a deepest.models.AbstractDrivenModel) or F(t, x, params, u)."
        )
    if isinstance(model, AbstractDrivenModel) and model.n_inputs != inputs.n_inputs:
        raise ValueError(
            f"{type(model).__name__} takes {model.n_inputs} input signal(s); the inputs "
            f"hold {inputs.n_inputs}."
        )
    if times is not None:
        inputs.check_covers(float(times[0]), float(times[-1]), "the window")
    return inputs


def check_uses_input(problem) -> None:
    """A `ValueError` if the problem's model ignores its input: ∂F/∂u is zero at the
    window's first time, at the middle of the starting ranges and the parameters'
    values (a model that reads no input would be fitted as if undriven)."""
    dtype = problem.data.values.dtype
    t = jnp.asarray(problem.data.times[0], dtype)
    x = jnp.asarray([(a + b) / 2 for a, b in problem.state_ranges], dtype)
    u = problem.inputs(t)
    jac = jax.jacfwd(lambda u: problem.field(t, x, {}, u))(u)
    if not np.any(np.asarray(jac)):
        raise ValueError(
            "The model ignores its input: dF/du is zero (at the window's start, mid-range "
            "states). Use the input in the model, or drop `inputs`."
        )
