"""Backpropagation as the explicit costate sweep of a layered dynamical system.

Design note
-----------
A network is a discrete-time dynamical system x(l+1) = f_l(x(l); W(l)), l = 0..L-1, and the
output misfit C depends on the last state only. Its gradient is the solution of a two-point
problem (Abarbanel, Rozdeba & Shirman 2018): sweep the states forward from the input, then
sweep the *costate* backward from the output,

    λ(L) = ∂C/∂x(L),   λ(l) = (∂f_l/∂x(l))ᵀ λ(l+1),   ∂C/∂W(l) = (∂f_l/∂W(l))ᵀ λ(l+1).

Sign convention: λ is the backprop costate, λ(l) = ∂C/∂x(l). The canonical momentum of the
ML action (R_m-weighted input/output misfit plus R_f-weighted model error),
p(l+1) ∝ R_f (x(l+1) − f_l(x(l))), ends at p(L) = −∂C/∂x(L) and obeys the same linear
recursion, so p = −λ as R_f → ∞ (the continuous networks use the same convention).

The sweep is written out, not delegated to `jax.grad` of the loss: the forward pass
linearises one layer map at a time with `jax.vjp` (inside a `lax.scan` over a stack of equal
layers) and stores each layer's VJP residuals; the backward `lax.scan` replays them from the
output layer down, carrying λ. Residuals that are just the layer's own weights are not
stored again (the backward scan reads them from the weights themselves), so the sweep keeps
what reverse-mode autodiff keeps and recomputes nothing.

Protocol
--------
Every network is a [`deepest.AbstractCostateNetwork`][] (`_protocol.py`): it provides, for
ONE sample, `costate_sweep(x, dC_dy) -> (costates, grad)` (the costates λ(0..L) in the
network's layout: a tuple of per-layer arrays for a `LayeredNetwork`, one (T+1, N) array for
a `RecurrentNetwork`; `grad` = ∂C/∂(network) laid out as `eqx.filter_grad` lays it out), and
the batched form `costate_pullback(xs) -> (ys, pullback)`, `pullback(dC_dys) -> (costates,
grad)`. The layered and recurrent networks override the batched form so that the forward
pass runs once and the weight gradient is contracted over the batch inside each layer's VJP
(`_linearise.py`); the protocol's default maps `costate_sweep` over the batch, so a network
with only the per-sample sweep (e.g. the continuous networks) works unchanged.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, PyTree, Scalar

from .._misc import is_concrete
from ._protocol import AbstractCostateNetwork


def _pullback(net, xs):
    if not isinstance(net, AbstractCostateNetwork):
        raise TypeError(_NOT_A_COSTATE_NETWORK.format(type(net).__name__))
    return net.costate_pullback(xs)


_NOT_A_COSTATE_NETWORK = (
    "{} is not a deepest.AbstractCostateNetwork, so its `costate_sweep(x, dC_dy)` is "
    "unknown; use a deepest network (LayeredNetwork, RecurrentNetwork, ContinuousNetwork) "
    "or subclass deepest.AbstractCostateNetwork."
)


# -- public API ---------------------------------------------------------------------------


def costate_sweep(net: AbstractCostateNetwork, x: PyTree[ArrayLike], dC_dxL: PyTree[ArrayLike]):
    """The backward costate sweep of `net` for one sample.

    λ(L) = ∂C/∂x(L), λ(l) = (∂f_l/∂x(l))ᵀ λ(l+1), ∂C/∂W(l) = (∂f_l/∂W(l))ᵀ λ(l+1), from the
    states of the forward pass started at `x`. λ is the backprop costate; the action's
    canonical momentum is p = −λ.

    **Arguments:**

    - `net`: a [`deepest.AbstractCostateNetwork`][] ([`deepest.LayeredNetwork`][],
      [`deepest.RecurrentNetwork`][], [`deepest.ContinuousNetwork`][], …).
    - `x`: one input sample (no batch axis).
    - `dC_dxL`: ∂C/∂(output), the cotangent of `net(x)`.

    **Returns:** `(costates, grad)`: the costates λ(0..L) in the network's layout, and
    ∂C/∂(network) with the network's structure (as `eqx.filter_grad` gives it).

    **Example:**

    ```python
    net = deepest.LayeredNetwork([3, 8, 8, 2], jnp.tanh, key=jr.key(0))
    x = jnp.ones(3)
    costates, grad = deepest.costate_sweep(net, x, net(x) - 1.0)  # C = |net(x) - 1|²/2
    ```
    """
    if not isinstance(net, AbstractCostateNetwork):
        raise TypeError(_NOT_A_COSTATE_NETWORK.format(type(net).__name__))
    return net.costate_sweep(x, dC_dxL)


def costate_value_and_grad(
    output_loss: Callable[[Array, Array], Scalar], *, check_finite: bool | None = None
) -> Callable[[AbstractCostateNetwork, ArrayLike, ArrayLike], tuple[Scalar, PyTree]]:
    """As [`deepest.costate_grad`][], returning `(loss, grad)`."""
    if not callable(output_loss):
        raise TypeError(
            f"`output_loss` must be a function (y_hat, y) -> scalar; got {output_loss!r}."
        )

    def value_and_grad(net, x, y):
        x, y = _check_batch(x, y, check_finite)
        y_hat, pullback = _pullback(net, x)
        if y.ndim == y_hat.ndim and y.shape != y_hat.shape:
            raise ValueError(
                f"The targets have shape {y.shape} but the network outputs {y_hat.shape} for "
                "these inputs; give one target per output component."
            )
        loss, dC_dy = jax.value_and_grad(output_loss)(y_hat, y)
        return loss, pullback(dC_dy)[1]

    return value_and_grad


def costate_grad(
    output_loss: Callable[[Array, Array], Scalar], *, check_finite: bool | None = None
) -> Callable[[AbstractCostateNetwork, ArrayLike, ArrayLike], PyTree]:
    """The gradient of a batched output loss by the costate sweep.

    `costate_grad(output_loss)(net, x, y)` equals
    `jax.grad(lambda n: output_loss(jax.vmap(n)(x), y))(net)`: the forward pass runs on the
    batch, ∂C/∂ŷ comes from `jax.grad(output_loss)`, and the costate sweep of every sample is
    summed over the batch (inside each layer's VJP when the network has `costate_pullback`).

    **Arguments:**

    - `output_loss`: `output_loss(y_hat, y) -> scalar`, a function of the *batched* network
      output `y_hat` (leading axis: the M samples) and the targets `y`.
    - `check_finite`: whether to check that the inputs and targets are finite. `None`
      (default): checked on the host, before any compute, when they are concrete arrays, and
      not checked inside a `jax.jit` (where the check would cost time on every call).
      `True`: also checked inside `jit`, at run time with `eqx.error_if`. `False`: never.

    **Returns:** a function `(net, x, y) -> grad` with `x` the M inputs (leading axis M ≥ 1),
    `y` the M targets, and `grad` shaped like the network (as `eqx.filter_grad` gives it).
    Raises `ValueError` at trace time for an empty batch, batch sizes that differ, or
    targets whose shape differs from the output's (when they have the output's rank: integer
    class labels of rank one less are allowed), and for non-finite inputs or targets as
    `check_finite` says ([`deepest.fit`][] checks its data once, up front).

    **Example:**

    ```python
    mse = lambda y_hat, y: jnp.mean((y_hat - y) ** 2)
    grad = jax.jit(deepest.costate_grad(mse))(net, x, y)
    ```
    """
    value_and_grad = costate_value_and_grad(output_loss, check_finite=check_finite)

    def grad(net, x, y):
        return value_and_grad(net, x, y)[1]

    return grad


def _check_batch(x, y, check_finite):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(
            "`x` and `y` must carry a leading batch axis (M samples); got shapes "
            f"{x.shape} and {y.shape}."
        )
    if x.shape[0] == 0:
        raise ValueError("The batch is empty (M = 0); give at least one sample.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{x.shape[0]} inputs but {y.shape[0]} targets; give one target per input."
        )
    inexact = [a for a in (x, y) if jnp.issubdtype(a.dtype, jnp.inexact)]
    if check_finite is False or not inexact:
        return x, y
    if is_concrete(inexact):
        if not all(np.all(np.isfinite(np.asarray(a))) for a in inexact):
            raise ValueError("The inputs or the targets contain NaN or infinite values.")
        return x, y
    if check_finite:
        # One run-time check for both arrays: each `eqx.error_if` costs a fixed ~30 µs.
        finite = [jnp.all(jnp.isfinite(a)) for a in inexact]
        bad = jnp.logical_not(jnp.logical_and(finite[0], finite[-1]))
        x = eqx.error_if(x, bad, "The inputs or the targets contain NaN or infinite values.")
    return x, y


class CostateVJP(eqx.Module):
    """A network whose reverse-mode derivative is its explicit costate sweep.

    Built by [`deepest.costate_vjp`][]; call it as the network it wraps (or on a batch, if
    built with `batched=True`).
    """

    network: AbstractCostateNetwork
    batched: bool = eqx.field(static=True, default=False)

    def __call__(self, x):
        return _apply_costate(self.network, x, self.batched)


@eqx.filter_custom_vjp
def _apply_costate(net, x, batched):
    return jax.vmap(net)(x) if batched else net(x)


@_apply_costate.def_fwd
def _apply_costate_fwd(perturbed, net, x, batched):
    del perturbed
    xs = x if batched else jtu.tree_map(lambda a: a[None], x)
    ys, pullback = _pullback(net, xs)
    out = ys if batched else jtu.tree_map(lambda a: a[0], ys)
    return out, pullback


@_apply_costate.def_bwd
def _apply_costate_bwd(pullback, dC_dy, perturbed, net, x, batched):
    del perturbed, net, x
    if not batched:
        dC_dy = jtu.tree_map(lambda a: a[None], dC_dy)
    return pullback(dC_dy)[1]


def costate_vjp(net: AbstractCostateNetwork, *, batched: bool = False) -> CostateVJP:
    """Wrap `net` in a `jax.custom_vjp` whose backward pass is the costate sweep.

    `jax.grad` (and so optax training) of any loss of the wrapped network then runs the
    explicit sweep of [`deepest.costate_sweep`][] instead of JAX's reverse mode. Opt-in: the
    plain network stays plain. Gradients flow to the network only, not to the input.

    **Arguments:**

    - `net`: a [`deepest.AbstractCostateNetwork`][].
    - `batched`: if `False`, the wrapper maps one sample, as `net` does; under `jax.vmap`
      JAX sums one weight gradient per sample (memory ∝ batch × weights). If `True`, the
      wrapper maps a batch (leading axis) and the sweep contracts the weight gradient over
      the batch inside each layer, as [`deepest.costate_grad`][] does.

    **Returns:** a [`deepest.CostateVJP`][] module; its field `network` is the network.

    **Example:**

    ```python
    model = deepest.costate_vjp(net, batched=True)
    grad = jax.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model).network
    ```
    """
    if not isinstance(net, AbstractCostateNetwork):
        raise TypeError(_NOT_A_COSTATE_NETWORK.format(type(net).__name__))
    return CostateVJP(net, batched)
