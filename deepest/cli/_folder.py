"""Results folders that are never inconsistent.

A run writes into `OUT.incomplete`, a sibling of its results folder `OUT`, and renames it
to `OUT` only when its files are written (a complete result, or a partial one after
Ctrl-C). `--overwrite` replaces an old `OUT` only at that rename, by an atomic exchange
where the system has one (Linux `renameat2`), so a kill at any moment leaves the old folder
whole or the new one. A run that fails removes its `.incomplete` folder; one that is killed
leaves it with its last checkpoint, for `--resume`.
"""

import ctypes
import datetime
import os
import shutil

from .._io import sync_folder
from ..annealing import CHECKPOINT

INCOMPLETE = ".incomplete"


def default_out(config_path: str) -> str:
    """`results/NAME-TIME`, the results folder of a run of `config_path` by default."""
    stem = os.path.splitext(os.path.basename(config_path))[0]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("results", f"{stem}-{stamp}")


def _exchange(a: str, b: str) -> bool:
    """Swap the paths `a` and `b` in one atomic step; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


class ResultsFolder:
    """The folder a run writes into (`path`), published as `out` by `publish()`."""

    def __init__(self, out: str, overwrite: bool, resume_from: str | None = None):
        self.out = os.path.normpath(out)
        self.path = self.out + INCOMPLETE
        if os.path.isdir(self.out) and os.listdir(self.out) and not overwrite and not resume_from:
            raise FileExistsError(
                f"{self.out} exists and is not empty; choose another --out or pass --overwrite."
            )
        if resume_from is not None:
            if os.path.normpath(resume_from) != self.path:
                # Resuming a published partial result: continue in a fresh copy of it.
                shutil.rmtree(self.path, ignore_errors=True)
                shutil.copytree(resume_from, self.path)
            return
        if os.path.isdir(self.path):
            if os.path.exists(os.path.join(self.path, CHECKPOINT)) and not overwrite:
                raise FileExistsError(
                    f"{self.path} holds an interrupted run: continue it with "
                    f"`--resume {self.out}` or discard it with --overwrite."
                )
            shutil.rmtree(self.path)
        os.makedirs(self.path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def publish(self) -> str:
        """Move the written folder to `out` (replacing an old one in one step), its files
        and the rename flushed to disk."""
        sync_folder(self.path, files=True)
        if not os.path.exists(self.out):
            os.replace(self.path, self.out)
        elif _exchange(self.path, self.out):
            shutil.rmtree(self.path)  # now the old folder
        else:  # pragma: no cover - systems without an atomic exchange
            old = f"{self.out}.old-{os.getpid()}"
            os.replace(self.out, old)
            os.replace(self.path, self.out)
            shutil.rmtree(old)
        sync_folder(os.path.dirname(os.path.abspath(self.out)))
        return self.out

    def discard(self) -> None:
        """Remove the written folder (a failed run leaves nothing behind)."""
        shutil.rmtree(self.path, ignore_errors=True)


def resume_source(directory: str) -> tuple[str, str]:
    """The folder holding the checkpoint to resume for `--resume DIRECTORY`, and the results
    folder the resumed run publishes: `DIRECTORY` itself (a partial result) or its
    `.incomplete` sibling (a killed run)."""
    directory = os.path.normpath(directory)
    out = directory[: -len(INCOMPLETE)] if directory.endswith(INCOMPLETE) else directory
    for source in (directory, out + INCOMPLETE):
        if os.path.isfile(os.path.join(source, CHECKPOINT)):
            return source, out
    raise ValueError(
        f"--resume {directory}: no checkpoint there nor in {out + INCOMPLETE} "
        f"(a run writes one every `output.checkpoint_every` seconds and on Ctrl-C)."
    )
