"""Files: the one atomic writer, and the one flattener of pytrees into named arrays.

Every file the package writes (results, checkpoints, the CLI's folders) goes through
`write_atomic`, so a kill at any moment leaves the old file or the new one, whole. Result
files are `.npz` archives of named arrays (`flatten`: a pytree's arrays under their
paths, `"unknowns/params/forcing"`) with a JSON header in the array `meta`.
"""

import json
import os
from collections.abc import Callable
from typing import Any, BinaryIO

import jax.tree_util as jtu
import numpy as np


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call `write(file)` on a temporary file beside `path`, flush it to disk, rename it
    to `path` and flush the folder: a kill (or an exception in `write`) leaves the old
    file or the new one, never a part.

    **Arguments:**

    - `path`: the file to write.
    - `write`: writes the contents to the binary file object it is given.
    """
    path = os.fspath(path)
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
    sync_folder(os.path.dirname(os.path.abspath(path)))  # make the rename itself durable


def sync_folder(folder: str | os.PathLike, files: bool = False) -> None:
    """Flush `folder`'s entries (renames into it) to disk, and with `files=True` first
    every file below it: what a folder written in place and then renamed into its final
    name (the CLI's results folders) needs to be as durable as `write_atomic`'s files."""
    folder = os.fspath(folder)
    if files:
        for root, _, names in os.walk(folder):
            for name in names:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
            if root != folder:
                sync_folder(root)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _key(k) -> str:
    for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten(tree, prefix: str) -> dict[str, np.ndarray]:
    """The arrays of `tree` named by their paths below `prefix` (`prefix/key/key…`; a bare
    array is named `prefix`)."""
    out = {}
    for where, leaf in jtu.tree_flatten_with_path(tree)[0]:
        out["/".join([prefix, *(_key(k) for k in where)])] = np.asarray(leaf)
    return out


def unflatten(arrays: dict[str, np.ndarray], prefix: str):
    """The inverse of `flatten`, as nested dicts (of string keys): the array named
    `prefix`, or the dict of those below it."""
    if prefix in arrays:
        return arrays[prefix]
    tree: dict = {}
    for key, value in arrays.items():
        if not key.startswith(prefix + "/"):
            continue
        parts = key[len(prefix) + 1 :].split("/")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def _plain(o):
    if isinstance(o, np.generic | np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> str:
    """Write `arrays` and the JSON header `meta` to the `.npz` file `path`, atomically."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    arrays["meta"] = np.asarray(json.dumps(meta, default=_plain))
    write_atomic(path, lambda f: np.savez(f, **arrays))
    return os.fspath(path)


def load_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and JSON header of a file written by `save_npz`."""
    with np.load(os.fspath(path)) as f:
        arrays = dict(f)
    meta = json.loads(str(arrays.pop("meta"))) if "meta" in arrays else {}
    return arrays, meta
