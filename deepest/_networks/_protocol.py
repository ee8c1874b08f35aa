"""The costate-network protocol: what the costate sweep asks of a network."""

import abc

import equinox as eqx
import jax
import jax.tree_util as jtu
from jaxtyping import Array, PyTree


class AbstractCostateNetwork(eqx.Module):
    """A network whose reverse-mode derivative is its explicit costate sweep.

    Every network of `deepest` ([`deepest.LayeredNetwork`][], [`deepest.RecurrentNetwork`][],
    [`deepest.ContinuousNetwork`][]) implements this protocol, and so does any network that
    [`deepest.costate_sweep`][], [`deepest.costate_grad`][], [`deepest.costate_vjp`][] and
    [`deepest.fit`][] should differentiate by its sweep.

    Subclasses provide:

    - `__call__(x)`: the forward pass of one sample.
    - `costate_sweep(x, dC_dy) -> (costates, grad)`: for one sample, with `dC_dy` the
      cotangent of `net(x)`, the costates λ(0..L) in the network's layout and ∂C/∂(network)
      laid out as `eqx.filter_grad` lays it out (the network's structure, gradients at the
      floating-point arrays, `None` elsewhere).

    and may override `costate_pullback(xs)`, the batched form, whose default runs
    `jax.vmap` of `costate_sweep` and sums the weight gradient over the batch.

    **Example:**

    ```python
    class Scaled(deepest.AbstractCostateNetwork):
        net: deepest.LayeredNetwork

        def __call__(self, x):
            return self.net(x)

        def costate_sweep(self, x, dC_dy):
            costates, grad = self.net.costate_sweep(x, dC_dy)
            return costates, Scaled(grad)
    ```
    """

    @abc.abstractmethod
    def __call__(self, x: PyTree[Array]) -> PyTree[Array]:
        """The forward pass of one sample."""

    @abc.abstractmethod
    def costate_sweep(self, x: PyTree[Array], dC_dy: PyTree[Array]) -> tuple[PyTree, PyTree]:
        """`(costates, grad)` of one sample, `dC_dy` the cotangent of `self(x)`."""

    def costate_pullback(self, xs: PyTree[Array]) -> tuple[PyTree[Array], eqx.Module]:
        """The forward pass of a batch (leading axis) and its costate sweep.

        **Returns:** `(ys, pullback)` with `ys = jax.vmap(net)(xs)` and
        `pullback(dC_dys) -> (costates, grad)`: the costates of every sample (leading batch
        axis) and the weight gradient summed over the batch. `pullback` is an Equinox
        module, so it can be a residual of a `jax.custom_vjp`. This default maps
        `costate_sweep` over the batch; a network overrides it to run the forward pass once
        and contract the weight gradient over the batch inside each layer's VJP.
        """
        return jax.vmap(self)(xs), _SweepPullback(self, xs)

    def weights(self) -> list[Array]:
        """The floating-point arrays W of the network, in `jax.tree_util` order."""
        return jtu.tree_leaves(eqx.filter(self, eqx.is_inexact_array))

    def with_weights(self, weights: list[Array]) -> "AbstractCostateNetwork":
        """The network with its floating-point arrays replaced by `weights` (same order)."""
        params, static = eqx.partition(self, eqx.is_inexact_array)
        return eqx.combine(jtu.tree_unflatten(jtu.tree_structure(params), weights), static)


class _SweepPullback(eqx.Module):
    """The pullback of a network that only has the per-sample `costate_sweep`."""

    network: AbstractCostateNetwork
    xs: PyTree

    def __call__(self, cotangents):
        costates, grads = jax.vmap(self.network.costate_sweep)(self.xs, cotangents)
        return costates, jtu.tree_map(lambda g: g.sum(axis=0), grads)
