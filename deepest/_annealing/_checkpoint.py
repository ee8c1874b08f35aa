"""Checkpoints of the annealing loop: its exact state, written atomically, and resumed.

A checkpoint is one `.npz` file: every array of the loop's
[`deepest.annealing.LoopState`][] (the lanes' points, solver memories, β indices, step
counts and records, the loop's counters) and a JSON header with the package version, the
time run so far and the fingerprints of what the run was started with (problem arrays,
initial paths, schedule, settings, lane layout). A resume recomputes the fingerprints and
refuses a checkpoint whose fingerprints differ, naming what differs; the loop then goes on
from the saved state with the same compiled program, so it ends bit for bit where the
uninterrupted run ends.

Writes are atomic: the file is written beside its final name, flushed to disk, and renamed
over it, so a kill at any moment leaves the previous checkpoint or the new one, whole.
"""

import hashlib
import json
import os
from importlib import metadata

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np

CHECKPOINT = "checkpoint.npz"


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


def problem_digest(problem) -> str:
    """The problem's class and a digest of its arrays: what results and checkpoints record
    to recognise the problem they belong to."""
    return f"{type(problem).__name__} {_digest(problem)}"


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
            "max_steps": config.max_steps,
            "minimiser": repr(config.minimiser),
        },
        "lanes": {"n_paths": n_paths, "n_devices": n_devices, "dtype": str(y0.dtype)},
    }


def write_atomic(path: str, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, flush it to disk and rename it
    to `path`: a kill leaves the old file or the new one, never a part."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str, state, meta: dict) -> str:
    """Write the loop `state` and `meta` to `directory/checkpoint.npz`, atomically."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CHECKPOINT)
    arrays = {f"state/{i}": np.asarray(a) for i, a in enumerate(jtu.tree_leaves(state))}
    arrays["meta"] = np.asarray(json.dumps({"version": package_version(), **meta}))
    write_atomic(path, lambda f: np.savez(f, **arrays))
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
    try:
        with np.load(path) as f:
            arrays = dict(f)
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as e:  # a file that is not a checkpoint: say so, in one line
        raise ValueError(f"{path} is not a readable checkpoint: {e}") from None
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
        else:
            differ.append(name)
    if differ:
        raise ValueError(
            f"The checkpoint in {directory} is of another run; it differs in "
            + "; ".join(differ)
            + "."
        )
    leaves, treedef = jtu.tree_flatten(template)
    if len(arrays) != len(leaves):
        raise ValueError(f"{path} holds {len(arrays)} arrays; this run's loop has {len(leaves)}.")
    restored = []
    for i, leaf in enumerate(leaves):
        a = arrays[f"state/{i}"]
        if a.shape != leaf.shape or a.dtype != leaf.dtype:
            raise ValueError(
                f"{path}: array {i} has shape {a.shape} and dtype {a.dtype}; this run's loop "
                f"needs {leaf.shape} and {leaf.dtype}."
            )
        restored.append((put or jax.device_put)(a, getattr(leaf, "sharding", None)))
    return jtu.tree_unflatten(treedef, restored), meta
