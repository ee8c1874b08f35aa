"""Checkpoints of the annealing loop: its exact state, written atomically, and resumed.

A checkpoint is one file, `checkpoint.eqx`: a line of JSON (the header: the package
version, the time run so far and the fingerprints of what the run was started with:
problem arrays, initial paths, schedule, settings, lane layout), then every array of the
loop's [`deepest.annealing.LoopState`][] (the lanes' points, solver memories, β indices,
step counts and records, the loop's counters) by `equinox.tree_serialise_leaves`. A resume
recomputes the fingerprints and refuses a checkpoint whose fingerprints differ, naming
what differs; the loop then goes on from the saved state with the same compiled program,
so it ends bit for bit where the uninterrupted run ends.

Writes go through the package's one atomic writer (`deepest._io.write_atomic`), so a kill
at any moment leaves the previous checkpoint or the new one, whole.
"""

import hashlib
import json
import os
from importlib import metadata

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np

from .._io import write_atomic

CHECKPOINT = "checkpoint.eqx"


def package_version() -> str:
    try:
        return metadata.version("deepest")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree not installed
        return "unknown"


def _digest(tree) -> str:
    """SHA-256 of the arrays of `tree`, with their places, shapes and dtypes."""
    h = hashlib.sha256()
    for where, leaf in jtu.tree_flatten_with_path(eqx.filter(tree, eqx.is_array))[0]:
        a = np.asarray(leaf)
        h.update(f"{jtu.keystr(where)}:{a.dtype}:{a.shape};".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def problem_digest(problem, dtype=None) -> str:
    """The problem's class and a digest of its arrays: what results and checkpoints record
    to recognise the problem they belong to. With `dtype`, of the problem cast to it first,
    as a run in that dtype casts it (a float32 result recognises the float64 problem it
    was built from)."""
    if dtype is not None:
        problem = jtu.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, problem)
    digest = f"{type(problem).__name__} {_digest(problem)}"
    # Static settings the arrays do not show, digested apart so that a problem without
    # them keeps the digest of earlier versions: the box, the inputs' interpolation.
    box = (
        problem.bounds() if isinstance(problem, eqx.Module) and hasattr(problem, "bounds") else None
    )
    if box is not None:
        digest += f" box {_digest(box)}"
    inputs = getattr(problem, "inputs", None)
    if inputs is not None:
        digest += f" inputs {getattr(inputs, 'interpolation', '')}"
    return digest


def fingerprints(problem, y0, rf_table, factors, config, n_paths: int, n_devices: int) -> dict:
    """What a checkpoint must share with the run that resumes it, part by part."""
    return {
        "problem": problem_digest(problem),
        "initial paths": _digest(y0),
        "schedule": _digest((rf_table, factors)),
        "settings": {
            "n_beta": config.n_beta,
            "save_betas": list(config.save_betas),
            "ftol": config.ftol,
            "gtol": config.gtol,
            "max_evaluations": config.max_evaluations,
            "minimiser": repr(config.minimiser),
        },
        "lanes": {"n_paths": n_paths, "n_devices": n_devices, "dtype": str(y0.dtype)},
    }


def save_checkpoint(directory: str, state, meta: dict) -> str:
    """Write the loop `state` and `meta` to `directory/checkpoint.eqx`, atomically."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CHECKPOINT)
    header = json.dumps({"version": package_version(), **meta}).encode() + b"\n"

    def write(f):
        f.write(header)
        eqx.tree_serialise_leaves(f, state)

    write_atomic(path, write)
    return path


def load_checkpoint(directory: str, template, expected: dict, put=None):
    """The loop state saved in `directory`, shaped like `template` (a state of this run),
    after checking that it was written by a run of the same fingerprints `expected`; each
    array placed as `template`'s by `put(array, sharding)` (default `jax.device_put`).

    **Returns:** `(state, meta)`.
    """
    path = os.path.join(os.fspath(directory), CHECKPOINT)
    if not os.path.isfile(path):
        raise ValueError(f"{directory} holds no checkpoint ({CHECKPOINT}): nothing to resume.")
    with open(path, "rb") as f:
        try:
            meta = json.loads(f.readline())
        except Exception as e:  # a file that is not a checkpoint: say so, in one line
            raise ValueError(f"{path} is not a readable checkpoint: {e}") from None
        check_fingerprints(directory, meta, expected)
        leaves = jtu.tree_leaves(template)
        count = iter(range(len(leaves)))

        def read(f, leaf):
            i = next(count)
            try:
                a = np.load(f)
            except Exception:
                raise ValueError(
                    f"{path} holds {i} arrays; this run's loop has {len(leaves)}."
                ) from None
            if a.shape != leaf.shape or a.dtype != leaf.dtype:
                raise ValueError(
                    f"{path}: array {i} has shape {a.shape} and dtype {a.dtype}; this run's "
                    f"loop needs {leaf.shape} and {leaf.dtype}."
                )
            return (put or jax.device_put)(a, getattr(leaf, "sharding", None))

        state = eqx.tree_deserialise_leaves(f, template, filter_spec=read)
        if f.read(1):
            raise ValueError(f"{path} holds more arrays than this run's loop ({len(leaves)}).")
    return state, meta


def check_fingerprints(
    directory, meta: dict, expected: dict, what: str = "checkpoint", hint: str = ""
) -> None:
    """Refuse a checkpoint (`what`) of another run, naming what differs; `hint` says
    what to do."""
    differ = []
    if meta.get("version") != package_version():
        differ.append(f"version ({meta.get('version')} there, {package_version()} here)")
    for name, value in expected.items():
        saved = meta.get("fingerprints", {}).get(name)
        if saved == value:
            continue
        if isinstance(value, dict) and isinstance(saved, dict):
            keys = [k for k in value if saved.get(k) != value[k]]
            differ.append(
                f"{name}: "
                + ", ".join(f"{k} ({saved.get(k)!r} there, {value[k]!r} here)" for k in keys)
            )
        elif isinstance(value, list):
            differ.append(f"{name} ({saved!r} there, {value!r} here)")
        else:
            differ.append(name)
    if differ:
        raise ValueError(
            f"The {what} in {directory} is of another run; it differs in "
            + "; ".join(differ)
            + "."
            + (f" {hint}" if hint else "")
        )
