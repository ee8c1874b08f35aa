"""Results folders that are never inconsistent.

A run writes into `OUT.incomplete`, a sibling of its results folder `OUT`, and renames it
to `OUT` only when its files are written (a complete result, or a partial one after
Ctrl-C). `--overwrite` replaces an old `OUT` only at that rename, by an atomic exchange
where the system has one (Linux `renameat2`), so a kill at any moment leaves the old folder
whole or the new one. A run that fails removes its `.incomplete` folder; one that is killed
leaves it with its last checkpoint, for `--resume`.

One run at a time writes a results folder: `OUT.lock` (an `fcntl` lock, released by the
system when its process ends however it ends) is taken before anything is computed and
held until `OUT` is published; a second run for the same `OUT` is refused at once, naming
the first. Where `OUT` cannot be written at the end, the files go to `OUT.rescued`.
"""

import ctypes
import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
import time

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process
        return True
    return True


class FolderLock:
    """`OUT.lock`: an exclusive `fcntl` lock that names its owner (process, host, command,
    start), taken at once or refused."""

    def __init__(self, out: str):
        self.path = out + ".lock"
        self.note = None  # said when a dead owner's lock was taken over
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise ValueError(f"--out {out}: cannot write beside it ({e.strerror}).") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _read_owner(fd)
                os.close(fd)
                raise FileExistsError(
                    f"{out} is being written by another run ({owner}); wait for it to end "
                    "or choose another --out."
                ) from None
            # the lock file may have been removed by its last owner after we opened it
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_owner(fd, parsed=True)
        if isinstance(previous, dict) and previous.get("host") == socket.gethostname():
            pid = previous.get("pid")
            if isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
                self.note = (
                    f"note: took over the lock of {out} left by process {pid}, which ended "
                    f"without releasing it ({previous.get('command', '?')})"
                )
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(["deepest", *sys.argv[1:]])[:300],
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and release the lock (removed first, so that a waiting
        run that opened the old file sees it gone and opens the new one)."""
        if self._fd is None:
            return
        try:
            os.remove(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def _read_owner(fd: int, parsed: bool = False):
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (OSError, ValueError):
        owner = None
    if parsed:
        return owner
    if not isinstance(owner, dict):
        return "a process that has not yet said which"
    return (
        f"process {owner.get('pid')} on {owner.get('host')}, `{owner.get('command')}`, "
        f"started {owner.get('started')}"
    )


def check_out(out: str) -> None:
    """Errors `--out` would give only after the compute: a path that is a file, a parent
    that is not a folder or cannot be written."""
    out = os.path.normpath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out.")
    parent = os.path.dirname(os.path.abspath(out))
    ancestor = parent
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"--out {out}: {ancestor} is a file, not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {ancestor} cannot be written (permission denied).")


class ResultsFolder:
    """The folder a run writes into (`path`), published as `out` by `publish()`; locked
    (`OUT.lock`) from construction to `publish()` or `discard()`."""

    def __init__(self, out: str, overwrite: bool, resume_from: str | None = None):
        self.out = os.path.normpath(out)
        self.path = self.out + INCOMPLETE
        self.published = False
        check_out(self.out)
        os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
        self.lock = FolderLock(self.out)
        try:
            self._prepare(overwrite, resume_from)
        except BaseException:
            self.lock.release()
            raise

    def _prepare(self, overwrite, resume_from):
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
            if holds_work(self.path) and not overwrite:
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
        self.published = True
        sync_folder(os.path.dirname(os.path.abspath(self.out)))
        self.lock.release()
        return self.out

    def discard(self) -> None:
        """Remove the written folder (a failed run leaves nothing behind)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.lock.release()

    def keep(self) -> None:
        """Leave the written folder as it is (its checkpoint is for `--resume`)."""
        self.lock.release()


def rescue(out: str, write, tries: int = 3, pause: float = 1.0) -> str:
    """Write a run's files with `write(folder)` where `out` cannot be written: retried
    `tries` times into `OUT.incomplete`'s sibling `OUT.rescued`, then into the working
    folder, then the temporary folder. **Returns:** the folder written."""
    import tempfile

    name = os.path.basename(os.path.normpath(out)) + ".rescued"
    errors = []
    for where in (
        os.path.normpath(out) + ".rescued",
        os.path.join(os.getcwd(), name),
        os.path.join(tempfile.gettempdir(), f"{name}-{os.getpid()}"),
    ):
        for attempt in range(tries):
            try:
                os.makedirs(where, exist_ok=True)
                write(where)
                sync_folder(where, files=True)
                return where
            except OSError as e:
                errors.append(f"{where}: {e}")
                time.sleep(pause * (attempt < tries - 1))
    raise OSError("the results could not be written anywhere: " + "; ".join(errors[-3:]))


def resume_source(directory: str) -> tuple[str, str]:
    """The folder holding the checkpoint to resume for `--resume DIRECTORY`, and the results
    folder the resumed run publishes: its `.incomplete` sibling (a killed run, or a
    resumed one killed: newer than a published partial result) or `DIRECTORY` itself (a
    partial result)."""
    directory = os.path.normpath(directory)
    out = directory[: -len(INCOMPLETE)] if directory.endswith(INCOMPLETE) else directory
    for source in (out + INCOMPLETE, directory):
        if os.path.isfile(os.path.join(source, CHECKPOINT)):
            return source, out
    raise ValueError(
        f"--resume {directory}: no checkpoint there nor in {out + INCOMPLETE} "
        f"(a run writes one every `output.checkpoint_every` seconds and on Ctrl-C)."
    )


def resume_folder(directory: str, command: str) -> tuple[str, str]:
    """For `deepest pamc|train --resume DIRECTORY`: the folder of the interrupted run (its
    config.yaml and finished work; these commands keep an interrupted run unpublished, in
    `OUT.incomplete`) and the results folder it publishes."""
    directory = os.path.normpath(directory)
    out = directory[: -len(INCOMPLETE)] if directory.endswith(INCOMPLETE) else directory
    source = out + INCOMPLETE
    if os.path.isfile(os.path.join(source, "config.yaml")):
        return source, out
    if os.path.isdir(out):
        raise ValueError(f"--resume {directory}: {out} is complete; there is nothing to resume.")
    raise ValueError(
        f"--resume {directory}: no interrupted {command} in {source} (its config.yaml)."
    )


def holds_work(path: str) -> bool:
    """Whether the folder `path` holds finished work (a checkpoint, a result, anywhere
    below it), not only a run's config."""
    for _, _, names in os.walk(path):
        if any(n not in ("config.yaml", "sweep.yaml") for n in names):
            return True
    return False
