"""Progress meters of [`deepest.anneal`][], in the manner of diffrax's: a component that
opens a display before the run, is told from inside the compiled loop how many (path, β)
minimisations have finished, and closes it after."""

import abc
import importlib.util
import threading
from typing import ClassVar

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Int


class AbstractProgressMeter(eqx.Module):
    """How [`deepest.anneal`][] shows its progress.

    `open(total)` runs on the host before the compiled loop and returns a handle (an
    integer, passed into the loop as an array, so that one compiled program serves every
    run); `update(handle, n_done, lowest_beta)` is traced into the loop and called when
    `n_done` > 0 minimisations finished in a step; `close(handle)` runs after the loop.
    """

    @abc.abstractmethod
    def open(self, total: int) -> int:
        """Open a display of `total` (path, β) minimisations; return its handle."""

    @abc.abstractmethod
    def update(
        self, handle: Int[Array, ""], n_done: Int[Array, ""], lowest_beta: Int[Array, ""]
    ) -> None:
        """Inside the loop: `n_done` more minimisations finished; the lowest β running."""

    @abc.abstractmethod
    def close(self, handle: int) -> None:
        """Close the display `handle`."""

    def compiling(self, size: int) -> None:  # noqa: B027 - optional; by default silent
        """On the host, before the loop's program is compiled (seconds to minutes for a
        large problem): its size in lines of StableHLO. Nothing by default."""


class NoProgressMeter(AbstractProgressMeter):
    """Show nothing (`anneal(progress=False)`)."""

    def open(self, total: int) -> int:
        return 0

    def update(self, handle, n_done, lowest_beta) -> None:
        pass

    def close(self, handle: int) -> None:
        pass


class TqdmProgressMeter(AbstractProgressMeter):
    """A tqdm bar of finished (path, β) minimisations (`anneal(progress=True)`), with the
    lowest β still running as its postfix.

    The bars open during a run are found by their handle through a table on the host, as
    diffrax's meters do: the compiled loop is shared by every run of the same shapes and
    settings, so it cannot hold a bar itself.
    """

    _bars: ClassVar[dict[int, object]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __check_init__(self):
        if importlib.util.find_spec("tqdm") is None:
            raise ValueError("TqdmProgressMeter needs tqdm: `pip install tqdm`.")

    def open(self, total: int) -> int:
        from tqdm.auto import tqdm

        with self._lock:
            handle = min(set(range(len(self._bars) + 2)) - set(self._bars) - {0})
            self._bars[handle] = tqdm(total=total, desc="annealing", unit="min")
        return handle

    @classmethod
    def _show(cls, handle, n_done, lowest_beta) -> None:
        bar = cls._bars.get(int(handle))
        if bar is not None:
            bar.update(int(n_done))
            bar.set_postfix_str(f"lowest β running: {int(lowest_beta)}", refresh=False)

    def update(self, handle, n_done, lowest_beta) -> None:
        jax.lax.cond(
            n_done > 0,
            lambda: jax.debug.callback(type(self)._show, handle, n_done, lowest_beta),
            lambda: None,
        )

    def close(self, handle: int) -> None:
        with self._lock:
            bar = self._bars.pop(handle, None)
        if bar is not None:
            bar.close()


def progress_meter(progress: bool | AbstractProgressMeter) -> AbstractProgressMeter:
    """`anneal`'s `progress` argument as a meter: True → tqdm, False → none."""
    if isinstance(progress, AbstractProgressMeter):
        return progress
    if not isinstance(progress, bool | np.bool_):
        raise TypeError(
            "`progress` must be True, False or a deepest.annealing.AbstractProgressMeter; "
            f"got {progress!r}."
        )
    return TqdmProgressMeter() if progress else NoProgressMeter()
