"""The layered (feedforward) network as a discrete-time dynamical system.

Layer l is time, the neurons of layer l are the state x(l), the weights W(l) are the model
parameters: x(l+1) = f_l(x(l); W(l)) (Abarbanel, Rozdeba & Shirman 2018). Its reverse-mode
derivative is the costate sweep of [`deepest.costate_sweep`][].
"""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._misc import default_float, positive_int
from ._layers import Dense, Function, Initialiser, check_callable, initialise, segments
from ._linearise import linearise, rebuild, split_layer
from ._protocol import AbstractCostateNetwork


class LayeredNetwork(AbstractCostateNetwork):
    """A feedforward network read as a discrete-time dynamical system.

    x(l+1) = f_l(x(l); W(l)), l = 0..L−1, with dense layers f_l(x) = σ_l(W(l) x + b(l)) by
    default, or any Equinox modules as the layers. With `residual_step=h` every layer map is
    the forward-Euler step x(l+1) = x(l) + h·F_l(x(l); W(l)) of dx/dt = F(x; W(t)): choose
    h = T/L and a deeper network is a finer time resolution of the same continuous network
    (the bridge to [`deepest.ContinuousNetwork`][]).

    A run of n ≥ 2 consecutive layers that differ only in their array values (e.g. the hidden
    layers of equal width) is stored as one module whose arrays have a leading axis of length
    n, and is run with `lax.scan`: deep stacks compile once.

    `net(x)` is the plain forward pass of one sample (differentiate it with JAX as usual);
    `net.states(x)` gives every layer's state; `net.costate_sweep(x, dC_dxL)` is the explicit
    backward sweep of [`deepest.costate_sweep`][].

    **Arguments:**

    - `widths`: the layer widths N_0, …, N_L (L ≥ 1) of a dense network.
    - `activation`: σ, one function for every layer or a sequence of L functions (use
      `lambda z: z` for a linear layer). Default `jnp.tanh`.
    - `key`: a PRNG key for the initial weights (dense network).
    - `use_bias`: whether dense layers have a bias.
    - `init`: initial weights: `'normal'` (N(0, 1/N_l), default), `'uniform'` (U(±1/√N_l)),
      `'zeros'`, or a function `(key, shape, dtype) -> array`.
    - `bias_init`: initial biases, the same choices (default `'zeros'`).
    - `residual_step`: h > 0 for the residual layer map x + h·F(x), or `None` (default).
    - `layers`: instead of `widths`: a sequence of Equinox modules mapping one sample's state
      to the next, or plain functions (held static, e.g. `jnp.tanh` between two
      `eqx.nn.Linear`); the other dense-network arguments must then be left out.
    - `dtype`: floating dtype of dense weights (default: JAX's default float).

    **Example:**

    ```python
    net = deepest.LayeredNetwork([2, 16, 16, 16, 1], [jnp.tanh] * 3 + [lambda z: z],
                                 key=jr.key(0))
    y = net(jnp.ones(2))              # shape (1,)
    xs = net.states(jnp.ones(2))      # x(0), ..., x(4)
    resnet = deepest.LayeredNetwork([4] * 21, jnp.tanh, residual_step=1.0 / 20,
                                    key=jr.key(1))  # T = 1, L = 20
    ```
    """

    layers: tuple[PyTree, ...]
    stack_lengths: tuple[int, ...] = eqx.field(static=True)
    widths: tuple[int, ...] | None = eqx.field(static=True)
    residual_step: float | None = eqx.field(static=True)

    def __init__(
        self,
        widths: Sequence[int] | None = None,
        activation: Callable | Sequence[Callable] = jnp.tanh,
        *,
        key: PRNGKeyArray | None = None,
        use_bias: bool = True,
        init: Initialiser = "normal",
        bias_init: Initialiser = "zeros",
        residual_step: float | None = None,
        layers: Sequence[Callable] | None = None,
        dtype=None,
    ):
        if residual_step is not None:
            residual_step = float(residual_step)
            if not (np.isfinite(residual_step) and residual_step > 0):
                raise ValueError(
                    f"`residual_step` must be a positive step h = T/L; got {residual_step}."
                )
        self.residual_step = residual_step
        if (widths is None) == (layers is None):
            raise ValueError("Give either `widths` (a dense network) or `layers`, not both.")
        if layers is not None:
            dense_only = {
                "activation": activation is not jnp.tanh,
                "key": key is not None,
                "use_bias": use_bias is not True,
                "init": not (isinstance(init, str) and init == "normal"),
                "bias_init": not (isinstance(bias_init, str) and bias_init == "zeros"),
                "dtype": dtype is not None,
            }
            given = [name for name, is_given in dense_only.items() if is_given]
            if given:
                raise ValueError(
                    f"{', '.join(f'`{n}`' for n in given)} configure dense layers; with "
                    "`layers` the modules carry their own weights, so leave them out."
                )
            layers = list(layers)
            if not layers:
                raise ValueError("`layers` is empty; a network needs at least one layer.")
            for i, layer in enumerate(layers):
                check_callable(layer, f"layers[{i}]", "eqx.nn.Linear(3, 4, key=key)")
            layers = [
                layer if isinstance(layer, eqx.Module) else Function(layer) for layer in layers
            ]
            widths = self._infer_widths(layers, residual_step)
        else:
            if len(widths) < 2:
                raise ValueError(
                    f"`widths` must list N_0, …, N_L (L ≥ 1) positive widths; got {widths}."
                )
            widths = tuple(positive_int(w, f"widths[{i}]") for i, w in enumerate(widths))
            if key is None:
                raise ValueError("A dense network needs a PRNG `key` for its initial weights.")
            n_layers = len(widths) - 1
            if callable(activation):
                activation = [activation] * n_layers
            elif isinstance(activation, str) or not isinstance(activation, Sequence):
                check_callable(activation)
            else:
                activation = list(activation)
                if len(activation) != n_layers:
                    raise ValueError(
                        f"{len(activation)} activations for {n_layers} layers; give one "
                        "function, or one per layer."
                    )
            for i, a in enumerate(activation):
                check_callable(a, f"activation[{i}]" if n_layers > 1 else "activation")
            if residual_step is not None and len(set(widths)) != 1:
                raise ValueError(
                    f"A residual network x + h·F(x) keeps the width; got widths {widths}."
                )
            dtype = default_float(dtype)
            layers = []
            for n_in, n_out, act, k in zip(
                widths[:-1], widths[1:], activation, jr.split(key, n_layers), strict=True
            ):
                kw, kb = jr.split(k)
                weight = initialise(init, kw, (n_out, n_in), dtype, n_in, "init")
                bias = (
                    initialise(bias_init, kb, (n_out,), dtype, n_in, "bias_init")
                    if use_bias
                    else None
                )
                layers.append(Dense(weight, bias, act))
        self.widths = widths
        self.layers, self.stack_lengths = segments(layers)

    @staticmethod
    def _infer_widths(layers, residual_step):
        """Widths from the first layer's `in_features`, checked layer by layer; else None."""
        n_in = getattr(layers[0], "in_features", None)
        if not isinstance(n_in, int):
            return None
        widths = [n_in]
        floats = jtu.tree_leaves(eqx.filter(layers[0], eqx.is_inexact_array))
        dtype = floats[0].dtype if floats else default_float()
        for i, layer in enumerate(layers):
            try:
                out = jax.eval_shape(layer, jax.ShapeDtypeStruct((widths[-1],), dtype))
            except Exception as err:
                raise ValueError(
                    f"layers[{i}] cannot map a state of width {widths[-1]} (the width of the "
                    f"layer before): {err}"
                ) from err
            if not isinstance(out, jax.ShapeDtypeStruct) or out.ndim != 1:
                raise ValueError(f"layers[{i}] must map a 1-D state to a 1-D state.")
            if residual_step is not None and out.shape[0] != widths[-1]:
                raise ValueError(
                    f"layers[{i}] maps width {widths[-1]} to {out.shape[0]}; a residual "
                    "network x + h·F(x) keeps the width."
                )
            widths.append(out.shape[0])
        return tuple(widths)

    @property
    def depth(self) -> int:
        """The number of layer maps L."""
        return sum(self.stack_lengths)

    def layer(self, index: int) -> PyTree:
        """The module of layer map f_index, 0 ≤ index < L (unstacked)."""
        if not 0 <= index < self.depth:
            raise IndexError(f"layer {index} out of range for a network of depth {self.depth}.")
        for layer, n in zip(self.layers, self.stack_lengths, strict=True):
            if index < n:
                if n == 1:
                    return layer
                dynamic, static = eqx.partition(layer, eqx.is_array)
                return eqx.combine(jtu.tree_map(lambda a, i=index: a[i], dynamic), static)
            index -= n

    def _map(self, layer):
        if self.residual_step is None:
            return layer
        h = self.residual_step
        return lambda x: x + h * layer(x)

    def _check_input(self, x, batched: bool):
        x = jnp.asarray(x)
        if self.widths is None:
            return x
        expected = (self.widths[0],)
        shape = x.shape[1:] if batched else x.shape
        if shape != expected or (batched and x.ndim != 2):
            what = "a batch of inputs (M, N_0)" if batched else "one input of shape (N_0,)"
            raise ValueError(
                f"The network's input layer has width N_0 = {self.widths[0]}, so it takes "
                f"{what}; got shape {x.shape}."
            )
        return x

    def _scan_segments(self, x, keep_states: bool):
        states = [x] if keep_states else None
        for layer, n in zip(self.layers, self.stack_lengths, strict=True):
            if n == 1:
                x = self._map(layer)(x)
                if keep_states:
                    states.append(x)
                continue
            dynamic, static = eqx.partition(layer, eqx.is_array)

            def step(x, p, static=static):
                y = self._map(eqx.combine(p, static))(x)
                return y, (y if keep_states else None)

            x, ys = lax.scan(step, x, dynamic)
            if keep_states:
                states.extend(ys[i] for i in range(n))
        return x, states

    def __call__(self, x: Float[ArrayLike, " n_in"]) -> Float[Array, " n_out"]:
        """The forward pass x(0) = x ↦ x(L) of one sample."""
        return self._scan_segments(self._check_input(x, batched=False), False)[0]

    def states(self, x: Float[ArrayLike, " n_in"]) -> tuple[Float[Array, " _"], ...]:
        """Every layer's state `(x(0), …, x(L))` of the forward pass from `x` (one sample)."""
        return tuple(self._scan_segments(self._check_input(x, batched=False), True)[1])

    def costate_pullback(self, xs: Float[ArrayLike, "batch n_in"]):
        """The forward pass of a batch and its costate sweep, one `jax.vjp` per layer.

        **Returns:** `(ys, pullback)` with `ys = jax.vmap(net)(xs)` and
        `pullback(dC_dys) -> (costates, grad)`: `costates` the tuple `(λ(0), …, λ(L))` of
        (batch, N_l) arrays, `grad` the weight gradient summed over the batch.
        """
        xs = self._check_input(xs, batched=True)
        x = xs
        params, records, specs = [], [], []
        for layer, n in zip(self.layers, self.stack_lengths, strict=True):
            diff, nondiff, static = split_layer(layer)
            params.append((diff, nondiff))

            def fn(p, data, x, static=static):
                return jax.vmap(self._map(eqx.combine(p, data, static)))(x)

            if n == 1:
                x, stored, spec = linearise(fn, diff, nondiff, x)
            else:
                box = []

                def step(x, pd, fn=fn, box=box):
                    y, stored, spec = linearise(fn, pd[0], pd[1], x)
                    box.append(spec)
                    return y, stored

                x, stored = lax.scan(step, x, (diff, nondiff))
                spec = box[-1]
            records.append(stored)
            specs.append(spec)
        pullback = _LayeredPullback(
            tuple(params),
            tuple(records),
            tuple(specs),
            self.stack_lengths,
            eqx.filter(self, eqx.is_inexact_array),
        )
        return x, pullback

    def costate_sweep(self, x: Float[ArrayLike, " n_in"], dC_dxL: Float[ArrayLike, " n_out"]):
        """The costate sweep of one sample: `(λ(0), …, λ(L))` and ∂C/∂(network).

        λ(L) = `dC_dxL`, λ(l) = (∂f_l/∂x(l))ᵀ λ(l+1), ∂C/∂W(l) = (∂f_l/∂W(l))ᵀ λ(l+1); see
        [`deepest.costate_sweep`][].
        """
        x = self._check_input(x, batched=False)
        _, pullback = self.costate_pullback(x[None])
        costates, grad = pullback(jnp.asarray(dC_dxL)[None])
        return tuple(c[0] for c in costates), grad


class _LayeredPullback(eqx.Module):
    """The stored forward pass of a `LayeredNetwork`; called with ∂C/∂x(L) it sweeps back.

    `params` are each run's (differentiable, other) arrays, `records` the VJP residuals that
    `linearise` did not recognise as those arrays, and `template` the network's
    floating-point arrays, whose structure the gradient takes.
    """

    params: tuple
    records: tuple
    specs: tuple = eqx.field(static=True)
    stack_lengths: tuple[int, ...] = eqx.field(static=True)
    template: LayeredNetwork

    def __call__(self, dC_dxL):
        lam = dC_dxL
        grads, segment_costates = [], []
        for (diff, nondiff), stored, spec, n in reversed(
            list(zip(self.params, self.records, self.specs, self.stack_lengths, strict=True))
        ):
            if n == 1:
                segment_costates.append((lam,))
                grad, lam = rebuild(stored, spec, diff, nondiff)(lam)
            else:

                def step(lam, xs, spec=spec):
                    p, data, stored = xs
                    grad, lam_prev = rebuild(stored, spec, p, data)(lam)
                    return lam_prev, (grad, lam)

                lam, (grad, lams) = lax.scan(step, lam, (diff, nondiff, stored), reverse=True)
                segment_costates.append(tuple(lams[i] for i in range(n)))
            grads.append(grad)
        costates = (lam,) + sum(reversed(segment_costates), ())
        grad = eqx.tree_at(lambda net: net.layers, self.template, tuple(reversed(grads)))
        return costates, grad
