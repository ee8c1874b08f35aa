"""One failure vocabulary: the result codes of every entry point, and `throw`'s meaning.

Every entry point ([`deepest.anneal`][], [`deepest.sweep`][], [`deepest.laplace`][],
[`deepest.pamc`][], [`deepest.solve_tpbvp`][]) reports failures as [`deepest.RESULTS`][]
codes, per path (per β and path, per chain, per solve), and takes `throw`:

- `throw=True` (the default) raises when the call produced nothing usable: every path of
  an annealing (of each point of a sweep) turned non-finite, every Laplace path's Hessian
  is not positive definite, every chain of PAMC turned non-finite, the boundary-value solve
  failed. The error (an `equinox.EquinoxRuntimeError`, a `RuntimeError`) names the
  [`deepest.RESULTS`][] message.
- `throw=False` returns the result with its codes whatever happened.

Failures of some paths only are always returned as codes, never raised.

Results own their files: [`deepest.AbstractResult`][]'s `save(path)` and
`load(path, problem)`.
"""

import collections
import dataclasses
import os
from typing import ClassVar

import equinox as eqx
import jax
import numpy as np
import optimistix as optx

from ._io import flatten, load_npz, save_npz, unflatten


class RESULTS(optx.RESULTS):  # pyright: ignore
    """The result codes of deepest: optimistix's (`successful`,
    `nonlinear_max_steps_reached`, `nonfinite`, …) and those of annealing, Laplace and the
    boundary-value solvers. An [equinox enumeration](https://docs.kidger.site/equinox/api/enumerations/):
    compare with `==` (`result == deepest.RESULTS.successful`, elementwise for the arrays
    of codes results hold), read the message with `deepest.RESULTS[result]`, raise with
    `result.error_if(x, pred)` inside `jit`.

    Codes of [`deepest.anneal`][] per (β, path): `successful` (the `ftol` or `gtol` rule
    fired: which one is `AnnealResult.converged_by`), `nonlinear_max_steps_reached`
    (`max_evaluations` evaluations without either), `stalled`, `nonfinite` (the action or its
    gradient at the β's first point), `not_reached`. Of [`deepest.laplace`][] per path:
    `successful` or `not_positive_definite`. Of [`deepest.pamc`][] per chain:
    `successful`, `nonfinite` or `not_positive_definite` (the whitening factor). Of
    [`deepest.solve_tpbvp`][]: optimistix's root-find codes and `max_nodes_reached`.
    """

    stalled = (
        "The line search (L-BFGS) or trust region (Levenberg–Marquardt) could make no "
        "further progress before either convergence rule was met."
    )
    not_reached = (
        "Not reached: the path turned non-finite at an earlier β, the run was interrupted "
        "first, or (a cycle's Gauss–Newton window) only the forecast path was run."
    )
    not_positive_definite = (
        "A Hessian of A₀ is not positive definite: for `laplace` the point is not a strict "
        "minimum (its statistics are NaN; add a `prior` on directions the data leave "
        "flat); for `pamc`'s whitening factor (the Gauss–Newton Hessian at the chains' "
        "mean) run in float64 or pass `precondition=False`."
    )
    max_nodes_reached = (
        "The collocation mesh reached `max_nodes` before every interval's residual fell "
        "below `tol`."
    )


def results_of(codes) -> RESULTS:
    """An array of [`deepest.RESULTS`][] indices as one (batched) RESULTS item, as a vmapped
    optimistix solution holds its `result`."""
    return eqx.tree_at(lambda r: r._value, RESULTS.successful, np.asarray(codes, np.int32))


def codes_of(result: RESULTS) -> np.ndarray:
    """The integer indices of a (batched) [`deepest.RESULTS`][] item, on the host."""
    return np.asarray(result._value)


def name_of(code: int) -> str:
    """The member name of a [`deepest.RESULTS`][] index."""
    return _NAMES[int(code)]


_NAMES = {int(item._value): name for name, item in RESULTS._name_to_item.items()}


def check_throw(throw: bool, usable, result: RESULTS, what: str) -> None:
    """`throw`'s one meaning: with `throw=True`, raise when no path (chain, solve) of the
    call is `usable`, naming the [`deepest.RESULTS`][] message of its most frequent
    failure; otherwise return, the failures left as codes in the result.

    **Arguments:**

    - `throw`: the entry point's argument.
    - `usable`: per path (or chain), whether it gave something usable.
    - `result`: the codes per path (any shape); the unsuccessful ones name the failure.
    - `what`: the call and what failed, e.g. "anneal: every path turned non-finite".
    """
    if not throw or np.any(usable):
        return
    codes = codes_of(result).ravel()
    failed = codes[codes != int(RESULTS.successful._value)]
    counts = collections.Counter(failed.tolist()).most_common()
    tally = ", ".join(f"{name_of(c)}: {n}" for c, n in counts)
    message = RESULTS._index_to_message[counts[0][0]] if counts else ""
    raise eqx.EquinoxRuntimeError(
        f"{what} ({tally}). {message} Pass throw=False to get the result with its codes "
        "(deepest.RESULTS)."
    )


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray | np.generic | jax.Array)


class AbstractResult(eqx.Module):
    """A result that owns its file: `result.save(path)` writes it, atomically, as one
    `.npz` archive (every array field, pytrees of arrays flattened under their paths, the
    codes with their names, and a JSON header of the other fields); `Result.load(path,
    problem)` reads it back. The problem is not saved: pass it to `load` for the methods
    that need it.

    `path` is a folder (the file is then `path/<file_name>`, e.g. `result.npz`) or a
    file name ending in `.npz`.
    """

    file_name: ClassVar[str] = "result.npz"

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> str:
        """Write this result to `path` (a folder, or a `.npz` file); refuses to replace an
        existing file unless `overwrite=True`.

        **Returns:** the path of the file.
        """
        file = type(self)._file(path, create=True)
        if os.path.exists(file) and not overwrite:
            raise FileExistsError(f"{file} exists; pass overwrite=True to replace it.")
        arrays, kinds, values = {}, {}, {}
        for field in dataclasses.fields(self):
            name, value = field.name, getattr(self, field.name)
            if name == "problem":
                continue
            if value is None:
                kinds[name] = "none"
            elif isinstance(value, RESULTS):
                kinds[name] = "codes"
                arrays[name] = codes_of(value)
            elif isinstance(value, dict) and value and all(isinstance(k, int) for k in value):
                kinds[name] = "by_beta"
                arrays.update(flatten({str(k): v for k, v in value.items()}, name))
            elif isinstance(value, dict | np.ndarray | np.generic | jax.Array) and all(
                _is_array(leaf) for leaf in jax.tree.leaves(value)
            ):
                kinds[name] = "arrays"
                arrays.update(flatten(value, name))
            else:
                kinds[name] = "json"
                values[name] = value
        meta = {
            "class": type(self).__name__,
            "kinds": kinds,
            "values": values,
            "codes": [name_of(i) for i in range(len(RESULTS))],
        }
        return save_npz(file, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, problem=None):
        """Read a result written by `save` from `path` (a folder or a `.npz` file); pass
        the `problem` it was computed on for the methods that need it."""
        arrays, meta = load_npz(cls._file(path))
        if meta.get("class") != cls.__name__:
            raise ValueError(
                f"{cls._file(path)} holds a {meta.get('class', 'file of another layout')}, "
                f"not a {cls.__name__}."
            )
        return cls(**_fields(arrays, meta), problem=problem)

    @classmethod
    def _file(cls, path, create: bool = False) -> str:
        path = os.fspath(path)
        if path.endswith(".npz"):
            folder = os.path.dirname(path)
        else:
            folder, path = path, os.path.join(path, cls.file_name)
        if create and folder:
            os.makedirs(folder, exist_ok=True)
        return path


def _fields(arrays: dict[str, np.ndarray], meta: dict) -> dict:
    """The fields of a result from its file (codes saved by another version of RESULTS
    mapped by name)."""
    index = {name: int(item._value) for name, item in RESULTS._name_to_item.items()}
    remap = np.asarray([index[name] for name in meta["codes"]], np.int32)
    fields = {}
    for name, kind in meta["kinds"].items():
        if kind == "none":
            fields[name] = None
        elif kind == "json":
            fields[name] = meta["values"][name]
        elif kind == "codes":
            fields[name] = results_of(remap[arrays[name]])
        elif kind == "by_beta":
            fields[name] = {int(k): v for k, v in unflatten(arrays, name).items()}
        else:
            fields[name] = unflatten(arrays, name)
    return fields
