"""Small helpers shared by every subpackage: argument checks, dtypes, pytrees."""

import difflib
import functools
import warnings
from collections.abc import Iterable

import equinox as eqx
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


def cast_floating(tree, dtype):
    """`tree` with its floating-point arrays cast to `dtype` (as a run in `dtype` casts its
    problem)."""
    return jtu.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


def host_memory() -> int | None:
    """The bytes of memory the host has available (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def format_bytes(n: float) -> str:
    """`n` bytes as "1.23 GB"."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


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


def renamed_keywords(**old_to_new: str):
    """Decorator: accept the old keyword names `old=new` of a function's renamed
    parameters, with a `DeprecationWarning`, for one release.

    A call that passes an old name and its new one at once raises `TypeError`. The
    wrapped function keeps its signature (`inspect.signature` reads the new names)."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(
                            f"{function.__qualname__}() got both `{new}` and its "
                            f"deprecated name `{old}`."
                        )
                    warnings.warn(
                        f"{function.__qualname__}(): the keyword `{old}` is deprecated; "
                        f"use `{new}`.",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper

    return decorate


def deprecated_alias(module: str, name: str, renames: dict[str, tuple[str, object]]):
    """A module `__getattr__`'s answer for a deprecated `name` of `module`: the object
    of its new name, with a `DeprecationWarning`; `renames` maps old name to
    (new full name, object)."""
    import warnings

    if name not in renames:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    new, obj = renames[name]
    warnings.warn(
        f"`{module}.{name}` is deprecated; use `{new}`.", DeprecationWarning, stacklevel=3
    )
    return obj
