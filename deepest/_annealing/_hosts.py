"""One host or several: what the annealing loop's host side does between chunks.

With `jax.distributed` initialised and devices of several processes, the lanes are one
global array sharded over every device of every process, and every process runs the same
host loop. Each then needs the same view of the loop (gathered from all processes), the
same decisions (chunk sizes, Ctrl-C: process 0's, or any process's interrupt), and inputs
that are global arrays or host values identical everywhere. Process 0 writes the files.
With one process all of this is the identity.
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np


class Hosts:
    """The processes holding `devices`: `many` when there are several."""

    def __init__(self, devices: Sequence[jax.Device]):
        self.many = len({d.process_index for d in devices}) > 1

    @property
    def writes(self) -> bool:
        """Whether this process writes files (process 0, or the only one)."""
        return not self.many or jax.process_index() == 0

    def get(self, tree):
        """Every array of `tree`, whole, as NumPy on this host."""
        if not self.many:
            return jax.device_get(tree)
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))

    def agree(self, value: int) -> int:
        """Process 0's `value` on every process."""
        if not self.many:
            return value
        from jax.experimental import multihost_utils

        return int(multihost_utils.broadcast_one_to_all(np.asarray(value)))

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on some process."""
        if not self.many:
            return flag
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([flag]), tiled=True)
        return bool(np.any(flags))

    def local(self, tree):
        """The arrays of `tree` (the same on every process) as host values, so that a
        program over every process's devices takes them as replicated."""
        if not self.many:
            return tree
        return jax.tree.map(lambda a: np.asarray(a) if eqx.is_array(a) else a, tree)

    def scalar(self, value: int):
        """An int32 loop input: a host value when several processes share the program."""
        return np.int32(value) if self.many else jax.numpy.asarray(value, jax.numpy.int32)

    def put(self, array: np.ndarray, sharding):
        """`array` (the same on every process) as a global array with `sharding`."""
        if not self.many:
            return jax.device_put(array, sharding)
        array = np.asarray(array)
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
