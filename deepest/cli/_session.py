"""What every command shares while it runs: each phase said on stderr as it starts, a
heartbeat whenever stderr has been silent for a second (so no stretch of a run is
silent, bars included), and Ctrl-C answered within two seconds whatever is running.

The work runs in a worker thread while the main thread waits for it: a Ctrl-C reaches
the main thread at once, even while the worker is inside a compiled program or the
compiler. The main thread then sets [`deepest.annealing.INTERRUPT`][] (an annealing loop
stops at the end of its chunk and the command writes a partial result) and waits a
moment; if the work has not returned by then, it says what is kept on disk and how to
resume, and exits at once.
"""

import contextlib
import dataclasses
import errno
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from ..annealing import CHECKPOINT, INTERRUPT, AbstractProgressMeter, TqdmProgressMeter
from ._folder import ResultsFolder, default_out, holds_work, rescue

# how long the work may take to answer Ctrl-C before the process exits without it
GRACE = 1.2
# stderr silent for this long during a phase: a heartbeat
HEARTBEAT = 1.0


class _Stamped:
    """sys.stderr, with the time of its last write (tqdm's bars write through it too)."""

    def __init__(self, stream):
        self.stream = stream
        self.last = time.monotonic()
        self.dangling = False  # a heartbeat left on the line (a terminal)

    def write(self, text):
        self.last = time.monotonic()
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


class Session:
    """The reporter of one command: `say` a line, `phase` a named stretch of work (with
    heartbeats), `run` the work in a worker thread with Ctrl-C answered in time."""

    current: "Session | None" = None  # the session of the running command

    def __init__(self, command: str, quiet: bool = False):
        Session.current = self
        self.command = command
        self.quiet = quiet
        self.start = time.monotonic()
        self.phase_name: str | None = None
        self.phase_start = self.start
        self.failed_phase: str | None = None
        self._tty = sys.stderr.isatty()
        if quiet:
            return
        self.stderr = _Stamped(sys.stderr)
        sys.stderr = self.stderr
        self._stop = threading.Event()
        threading.Thread(target=self._beat, daemon=True).start()

    def close(self) -> None:
        """Stop the heartbeat and give stderr back (idempotent)."""
        Session.current = None
        if self.quiet:
            return
        self._stop.set()
        if sys.stderr is self.stderr:
            self._end_line()
            sys.stderr = self.stderr.stream

    def _end_line(self):
        if self.stderr.dangling:
            self.stderr.write("\n")
            self.stderr.dangling = False

    def say(self, text: str) -> None:
        """A line on stderr, stamped with the seconds since the command started."""
        if self.quiet:
            return
        self._end_line()
        self.stderr.write(f"[{time.monotonic() - self.start:6.1f} s] {text}\n")
        self.stderr.flush()

    @contextlib.contextmanager
    def phase(self, text: str):
        """Say `text` and keep saying it is still going while nothing else is said."""
        self.say(text)
        self.phase_name, self.phase_start = text, time.monotonic()
        try:
            yield
        except BaseException:
            self.failed_phase = self.failed_phase or text
            raise
        finally:
            self.phase_name = None

    def _beat(self):
        while not self._stop.wait(0.2):
            name, now = self.phase_name, time.monotonic()
            if name is None or now - self.stderr.last < HEARTBEAT:
                continue
            line = f"[{now - self.start:6.1f} s]   … {name} ({now - self.phase_start:.0f} s)"
            if self._tty:  # rewrite one line, as the bars do
                self.stderr.write("\r" + line + "\x1b[K")
                self.stderr.dangling = True
            else:
                self.stderr.write(line + "\n")
            self.stderr.flush()

    def run(self, work: Callable[[], object], kept: Callable[[], str], folder=None):
        """`work()` in a worker thread: its value, or its exception raised here. On Ctrl-C
        the annealing loops are asked to stop (`INTERRUPT`); if `work` has not returned
        within `GRACE` seconds (or on a second Ctrl-C), `kept()` says what is on disk and
        the process exits with code 130 at once. If `work` raises, the results `folder`
        (a `ResultsFolder`) is kept where it holds finished work to resume, else removed."""
        INTERRUPT.clear()  # a stop asked of an earlier run in this process is not this one's
        try:
            return self._run(work, kept)
        except BaseException:
            if folder is not None:
                folder.keep() if holds_work(folder.path) else folder.discard()
            raise
        finally:
            INTERRUPT.clear()

    def _run(self, work, kept):
        box, done = {}, threading.Event()

        def target():
            try:
                box["value"] = work()
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                box["error"] = e
            finally:
                done.set()

        # (an Event, not Thread.join: a join cut by KeyboardInterrupt can leave the
        # thread reported as ended while it runs)
        threading.Thread(target=target, daemon=True).start()
        try:
            while not done.wait(0.1):
                pass
        except KeyboardInterrupt:
            INTERRUPT.set()
            self.say("interrupted: stopping …")
            deadline = time.monotonic() + GRACE
            try:
                while not done.wait(0.05) and time.monotonic() < deadline:
                    pass
            except KeyboardInterrupt:
                pass
            if not done.is_set():
                message = kept()
                self.close()
                print(message, file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(130)
        if "error" in box:
            raise box["error"]
        return box["value"]


@dataclasses.dataclass
class Outcome:
    """What a command produced: its results folder, whether the result is partial, its
    summary, and what failed after the compute (the folder then holds the result and a
    FAILED line)."""

    out: str
    partial: bool = False
    summary: str = ""
    failed: str | None = None


PREPARING = "annealing: checking its size, drawing the initial paths"


class CommandLineMeter(AbstractProgressMeter):
    """The annealing loop's meter in the command line: says when it compiles (and how
    large the program is) and when it starts, and shows tqdm's bar unless `bar` is
    False. The session it reports to is the one running (`Session.current`)."""

    bar: bool = True

    def compiling(self, size: int) -> None:
        session = Session.current
        if session is not None:
            session.phase_name = None
            session.say(f"compiling the annealing loop ({size:,} lines of StableHLO)")
            session.phase_name, session.phase_start = "compiling", time.monotonic()

    def open(self, total: int) -> int:
        session = Session.current
        if session is not None:
            session.phase_name = None
            session.say(f"annealing: {total:,} minimisations (path, β) to run")
            session.phase_name, session.phase_start = "annealing", time.monotonic()
        return TqdmProgressMeter().open(total) if self.bar else 0

    def update(self, handle, n_done, lowest_beta) -> None:
        if self.bar:
            TqdmProgressMeter().update(handle, n_done, lowest_beta)

    def close(self, handle: int) -> None:
        if self.bar:
            TqdmProgressMeter().close(handle)
        session = Session.current
        if session is not None:
            session.phase_name = None


def read_config(kind: str, config_path, sets, out, resume, locate):
    """A command's config, its resumed folder and its results folder: the config read
    from `config_path` with `sets`; or with `--resume` the folder's own (`locate(resume)`
    gives the folder and the results folder), checked against any config given anew."""
    from ..experiments import differences, load

    if resume is None:
        config = load(config_path, sets, kind=kind)
        return config, None, default_out(config_path) if out is None else out
    source, out = locate(resume)
    saved_path = os.path.join(source, "config.yaml")
    config = load(saved_path, kind=kind)
    if config_path is not None or sets:
        given = load(config_path or saved_path, sets, kind=kind)
        differ = differences(config.model_dump(), given.model_dump())
        if differ:
            raise ValueError(
                f"--resume {source}: the run there had other settings of {', '.join(differ)}; "
                "resume it with its own config (omit CONFIG and --set)."
            )
    return config, source, out


def start_jax(dtype: str):
    """jax, in x64 mode for a float64 run."""
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    return jax


def start_plots() -> None:
    """matplotlib's file backend, imported at the start of the work (a second or so), so
    that a Ctrl-C's partial result is quick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def open_folder(
    session: Session, out: str, overwrite: bool, source=None, shared: bool = False
) -> ResultsFolder | None:
    """The results folder `out`, locked, before any compute (a note if a dead run's lock
    was taken over); then the session's first line. `shared`: a command run by several
    processes (`jax.distributed`), whose process 0 alone writes: every process learns
    whether it could open the folder (the others get `None`), so that none starts work
    that process 0 has refused."""
    import jax

    folder, error = None, None
    if not shared or jax.process_index() == 0:
        try:
            folder = ResultsFolder(out, overwrite, resume_from=source)
        except (ValueError, FileExistsError) as e:
            error = e
    if shared and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        opened = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not opened and error is None:
            raise ValueError(f"process 0 could not open {out}; its error says why.")
    if error is not None:
        raise error
    if folder is not None:
        how = f"resuming {source}" if source else "writing"
        session.say(f"{session.command}: {how} {folder.out}")
        if folder.lock.note:
            session.say(folder.lock.note)
    return folder


def write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def write_config(path: str, config) -> None:
    import yaml

    write_text(path, yaml.safe_dump(config.model_dump(), sort_keys=False))


# errors of a folder that cannot be written: its files go elsewhere (`OUT.rescued`)
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO}


def finish(
    session: Session, folder: ResultsFolder, write, *, partial: bool, save, resume: str
) -> Outcome:
    """After the compute: write a result's files into the results folder with
    `write(folder_path) -> summary` and publish it. An error while writing (a statistic,
    a plot) publishes what was written, and the result itself (`save(folder_path)`), with
    a FAILED line in summary.txt; a folder that cannot be written sends the files to
    `OUT.rescued` (retried first). `resume` says how to continue a `partial` result."""
    try:
        summary = write(folder.path)
    except OSError as e:
        if e.errno not in _UNWRITABLE:
            raise
        session.say(f"cannot write {folder.path} ({e.strerror}): writing the results elsewhere")

        def rescued(where):
            # what the folder holds (config, earlier results, checkpoints), then the rest
            shutil.copytree(folder.path, where, dirs_exist_ok=True)
            write(where)
            if not partial:
                _remove_checkpoints(where)

        where = rescue(folder.out, rescued)
        folder.keep() if partial else folder.discard()
        failed = f"{folder.out} could not be written ({e.strerror}); the results are in {where}"
        return Outcome(where, partial, "", failed)
    except Exception as e:  # noqa: BLE001 - the finished result is published regardless
        failed = f"{session.failed_phase or 'writing the results'}: {type(e).__name__}: {e}"
        session.say(f"FAILED: {failed}")
        save(folder.path)
        summary_path = folder.file("summary.txt")
        summary = open(summary_path).read() if os.path.exists(summary_path) else ""
        summary += f"FAILED: {failed}\n"
        write_text(summary_path, summary)
    else:
        failed = None
    if partial:
        summary = f"PARTIAL RESULT: {resume}\n" + summary if "PARTIAL" not in summary else summary
    else:
        _remove_checkpoints(folder.path)  # a complete result has nothing to resume
    with session.phase(f"publishing {folder.out}"):
        folder.publish()
    return Outcome(folder.out, partial, summary, failed)


def _remove_checkpoints(path: str) -> None:
    """The checkpoints of a run in `path` (annealing, a sweep's programs, PAMC)."""
    from .. import PAMCResult

    for name in (CHECKPOINT, PAMCResult.checkpoint_name):
        if os.path.exists(os.path.join(path, name)):
            os.remove(os.path.join(path, name))
    shutil.rmtree(os.path.join(path, "checkpoints"), ignore_errors=True)


def kept_on_interrupt(folder: ResultsFolder | None, command: str, out: str) -> str:
    """What a Ctrl-C that the work could not answer in time leaves, said in one line: the
    finished work of an interrupted run (and how to resume it), or nothing."""
    if folder is None:
        return "interrupted"
    if folder.published:
        return f"interrupted after the results were published: {folder.out} is complete"
    if holds_work(folder.path):
        folder.keep()
        return (
            f"interrupted: the finished work is kept in {folder.path} (checkpoints and "
            f"results so far); continue with `deepest {command} --resume {out}`"
        )
    folder.discard()
    return "interrupted before anything was finished; nothing kept"
