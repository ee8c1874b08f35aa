"""Layered and recurrent networks as discrete-time dynamical systems.

Layer l is time, the neurons of layer l are the state x(l), the weights W(l) are the model
parameters: x(l+1) = f_l(x(l); W(l)) (Abarbanel, Rozdeba & Shirman 2018). Each network has
the costate sweep of `deepest._costate` as its reverse-mode derivative.
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

from ._costate import linearise, rebuild

Initialiser = str | Callable[[PRNGKeyArray, tuple[int, ...], jnp.dtype], Array]


def _initialise(init: Initialiser, key, shape, dtype, fan_in: int, name: str) -> Array:
    if callable(init):
        value = jnp.asarray(init(key, shape, dtype), dtype)
        if value.shape != shape:
            raise ValueError(f"`{name}` returned shape {value.shape}; expected {shape}.")
        return value
    if init == "normal":
        return jr.normal(key, shape, dtype) / np.sqrt(fan_in)
    if init == "uniform":
        bound = 1 / np.sqrt(fan_in)
        return jr.uniform(key, shape, dtype, -bound, bound)
    if init == "zeros":
        return jnp.zeros(shape, dtype)
    raise ValueError(
        f"`{name}` must be 'normal' (N(0, 1/fan_in)), 'uniform' (U(±1/√fan_in)), 'zeros', or "
        f"a function (key, shape, dtype) -> array; got {init!r}."
    )


def _check_callable(value, name="activation", example="jnp.tanh"):
    if not callable(value):
        raise TypeError(f"`{name}` must be callable, e.g. {example}; got {value!r}.")


def _float_dtype(dtype):
    return jnp.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype


class _Function(eqx.Module):
    """A plain function as a layer (e.g. an activation), held static: it has no weights."""

    fn: Callable = eqx.field(static=True)

    def __call__(self, x):
        return self.fn(x)


class _Dense(eqx.Module):
    """x ↦ σ(W x + b)."""

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"] | None
    activation: Callable = eqx.field(static=True)

    def __call__(self, x):
        z = self.weight @ x
        if self.bias is not None:
            z = z + self.bias
        return self.activation(z)


def _stackable(a, b) -> bool:
    """Whether two layers differ only in the values of their arrays."""
    leaves_a, tree_a = jtu.tree_flatten(a)
    leaves_b, tree_b = jtu.tree_flatten(b)
    if tree_a != tree_b:
        return False
    for u, v in zip(leaves_a, leaves_b, strict=True):
        if eqx.is_array(u) != eqx.is_array(v):
            return False
        if eqx.is_array(u):
            if u.shape != v.shape or u.dtype != v.dtype:
                return False
        elif u is not v and u != v:
            return False
    return True


def _stack(layers):
    dynamic = [eqx.partition(layer, eqx.is_array)[0] for layer in layers]
    static = eqx.partition(layers[0], eqx.is_array)[1]
    return eqx.combine(jtu.tree_map(lambda *xs: jnp.stack(xs), *dynamic), static)


def _split(layer):
    """(differentiable arrays, other arrays, non-arrays) of a layer."""
    dynamic, static = eqx.partition(layer, eqx.is_array)
    diff, nondiff = eqx.partition(dynamic, eqx.is_inexact_array)
    return diff, nondiff, static


class LayeredNetwork(eqx.Module):
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
                _check_callable(layer, f"layers[{i}]", "eqx.nn.Linear(3, 4, key=key)")
            layers = [
                layer if isinstance(layer, eqx.Module) else _Function(layer) for layer in layers
            ]
            widths = self._infer_widths(layers, residual_step)
        else:
            widths = tuple(int(w) for w in widths)
            if len(widths) < 2 or min(widths) < 1:
                raise ValueError(
                    f"`widths` must list N_0, …, N_L (L ≥ 1) positive widths; got {widths}."
                )
            if key is None:
                raise ValueError("A dense network needs a PRNG `key` for its initial weights.")
            n_layers = len(widths) - 1
            if callable(activation):
                activation = [activation] * n_layers
            elif isinstance(activation, str) or not isinstance(activation, Sequence):
                _check_callable(activation)
            else:
                activation = list(activation)
                if len(activation) != n_layers:
                    raise ValueError(
                        f"{len(activation)} activations for {n_layers} layers; give one "
                        "function, or one per layer."
                    )
            for i, a in enumerate(activation):
                _check_callable(a, f"activation[{i}]" if n_layers > 1 else "activation")
            if residual_step is not None and len(set(widths)) != 1:
                raise ValueError(
                    f"A residual network x + h·F(x) keeps the width; got widths {widths}."
                )
            dtype = _float_dtype(dtype)
            layers = []
            for n_in, n_out, act, k in zip(
                widths[:-1], widths[1:], activation, jr.split(key, n_layers), strict=True
            ):
                kw, kb = jr.split(k)
                weight = _initialise(init, kw, (n_out, n_in), dtype, n_in, "init")
                bias = (
                    _initialise(bias_init, kb, (n_out,), dtype, n_in, "bias_init")
                    if use_bias
                    else None
                )
                layers.append(_Dense(weight, bias, act))
        self.widths = widths
        segments = []
        for layer in layers:
            if segments and _stackable(segments[-1][0], layer):
                segments[-1].append(layer)
            else:
                segments.append([layer])
        self.layers = tuple(s[0] if len(s) == 1 else _stack(s) for s in segments)
        self.stack_lengths = tuple(len(s) for s in segments)

    @staticmethod
    def _infer_widths(layers, residual_step):
        """Widths from the first layer's `in_features`, checked layer by layer; else None."""
        n_in = getattr(layers[0], "in_features", None)
        if not isinstance(n_in, int):
            return None
        widths = [n_in]
        floats = jtu.tree_leaves(eqx.filter(layers[0], eqx.is_inexact_array))
        dtype = floats[0].dtype if floats else _float_dtype(None)
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
        """The forward pass of a batch and its costate sweep (see `deepest._costate`).

        **Returns:** `(ys, pullback)` with `ys = jax.vmap(net)(xs)` and
        `pullback(dC_dys) -> (costates, grad)`: `costates` the tuple `(λ(0), …, λ(L))` of
        (batch, N_l) arrays, `grad` the weight gradient summed over the batch.
        """
        xs = self._check_input(xs, batched=True)
        x = xs
        params, records, specs = [], [], []
        for layer, n in zip(self.layers, self.stack_lengths, strict=True):
            diff, nondiff, static = _split(layer)
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
    [`linearise`][] did not recognise as those arrays, and `template` the network's
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


class _ElmanCell(eqx.Module):
    """(h, u) ↦ σ(W_h h + W_u u + b)."""

    weight_state: Float[Array, "state state"]
    weight_input: Float[Array, "state input"]
    bias: Float[Array, " state"] | None
    activation: Callable = eqx.field(static=True)

    def __call__(self, h, u):
        z = self.weight_state @ h + self.weight_input @ u
        if self.bias is not None:
            z = z + self.bias
        return self.activation(z)


class _Linear(eqx.Module):
    """h ↦ W h + b."""

    weight: Float[Array, "out state"]
    bias: Float[Array, " out"] | None

    def __call__(self, h):
        y = self.weight @ h
        return y if self.bias is None else y + self.bias


class RecurrentNetwork(eqx.Module):
    """A recurrent network: one layer map shared across time, fed an input at each step.

    h(t+1) = f(h(t), u(t); W), h(0) = `initial_state` (trained), and a measurement (output)
    y(t) = g(h(t+1); V) after every step, t = 0..T−1. With the dense default
    f(h, u) = σ(W_h h + W_u u + b) (an Elman network) and g linear. Backpropagation through
    time is the costate sweep with measurements along the sequence: the costate jumps by
    (∂g/∂h)ᵀ ∂C/∂y(t) at every measured step,

        λ(T) = (∂g/∂h)ᵀ ∂C/∂y(T−1),
        λ(t) = (∂f/∂h(t))ᵀ λ(t+1) + (∂g/∂h(t))ᵀ ∂C/∂y(t−1),

    and the weight gradient is the sum over time Σ_t (∂f/∂W)ᵀ λ(t+1).

    **Arguments:**

    - `input_size`, `state_size`, `output_size`: widths of u, h and y (dense network).
    - `activation`: σ of the dense cell (default `jnp.tanh`).
    - `key`: a PRNG key for the initial weights (dense network).
    - `use_bias`: whether the cell and the readout have biases.
    - `init`: initial weights, as for [`deepest.LayeredNetwork`][] (fan-in N_state + N_input
      for the cell).
    - `cell`, `readout`, `initial_state`: instead of the sizes: an Equinox module (or
      callable) `cell(h, u) -> h'`, a readout `readout(h) -> y`, and h(0).
    - `dtype`: floating dtype of dense weights.

    `net(us)` maps an input sequence `us` (T, N_input) to the outputs (T, N_output);
    `net.states(us)` gives h(0..T) as a (T+1, N_state) array.

    **Example:**

    ```python
    rnn = deepest.RecurrentNetwork(1, 16, 1, key=jr.key(0))
    ys = rnn(jnp.ones((50, 1)))   # (50, 1)
    ```
    """

    cell: PyTree
    readout: PyTree
    initial_state: Float[Array, " state"]

    def __init__(
        self,
        input_size: int | None = None,
        state_size: int | None = None,
        output_size: int | None = None,
        activation: Callable = jnp.tanh,
        *,
        key: PRNGKeyArray | None = None,
        use_bias: bool = True,
        init: Initialiser = "normal",
        cell: Callable | None = None,
        readout: Callable | None = None,
        initial_state: Float[ArrayLike, " state"] | None = None,
        dtype=None,
    ):
        if cell is not None:
            if readout is None or initial_state is None:
                raise ValueError("A custom `cell` needs a `readout` and an `initial_state`.")
            if input_size is not None or state_size is not None or output_size is not None:
                raise ValueError("Give either the sizes (a dense network) or `cell`, not both.")
            _check_callable(cell, "cell", "a module (h, u) -> h'")
            _check_callable(readout, "readout", "eqx.nn.Linear(n_state, n_out, key=key)")
            self.cell, self.readout = cell, readout
            self.initial_state = jnp.asarray(initial_state)
            if self.initial_state.ndim != 1:
                raise ValueError("`initial_state` must be one state vector h(0).")
            return
        sizes = (input_size, state_size, output_size)
        if any(s is None or int(s) < 1 for s in sizes):
            raise ValueError(
                f"Give positive `input_size`, `state_size` and `output_size`; got {sizes}."
            )
        if key is None:
            raise ValueError("A dense network needs a PRNG `key` for its initial weights.")
        _check_callable(activation)
        n_u, n_h, n_y = (int(s) for s in sizes)
        dtype = _float_dtype(dtype)
        kh, ku, ky = jr.split(key, 3)
        fan_in = n_h + n_u
        zeros = (lambda n: jnp.zeros((n,), dtype)) if use_bias else (lambda n: None)
        self.cell = _ElmanCell(
            _initialise(init, kh, (n_h, n_h), dtype, fan_in, "init"),
            _initialise(init, ku, (n_h, n_u), dtype, fan_in, "init"),
            zeros(n_h),
            activation,
        )
        self.readout = _Linear(_initialise(init, ky, (n_y, n_h), dtype, n_h, "init"), zeros(n_y))
        self.initial_state = jnp.zeros((n_h,), dtype)

    def _check_input(self, us, batched: bool):
        us = jnp.asarray(us)
        n_in = getattr(self.cell, "weight_input", None)
        rank = 3 if batched else 2
        if us.ndim != rank or (n_in is not None and us.shape[-1] != n_in.shape[1]):
            what = "(M, T, N_input)" if batched else "(T, N_input)"
            raise ValueError(f"The input sequence must have shape {what}; got {us.shape}.")
        if us.shape[-2] == 0:
            raise ValueError("The input sequence is empty (T = 0).")
        return us

    def _run(self, us):
        def step(h, u):
            h = self.cell(h, u)
            return h, h

        _, hs = lax.scan(step, self.initial_state, us)
        return hs

    def __call__(self, us: Float[ArrayLike, "time n_in"]) -> Float[Array, "time n_out"]:
        """The outputs y(0..T−1) for the input sequence `us`."""
        return jax.vmap(self.readout)(self._run(self._check_input(us, batched=False)))

    def states(self, us: Float[ArrayLike, "time n_in"]) -> Float[Array, "time+1 state"]:
        """The states h(0), …, h(T) for the input sequence `us`."""
        hs = self._run(self._check_input(us, batched=False))
        return jnp.concatenate([self.initial_state[None], hs])

    def costate_pullback(self, us: Float[ArrayLike, "batch time n_in"]):
        """The forward pass of a batch of sequences and its costate sweep (BPTT).

        **Returns:** `(ys, pullback)`, `ys` (batch, T, N_output) and
        `pullback(dC_dys) -> (costates, grad)` with `costates` (batch, T+1, N_state).
        """
        us = jnp.moveaxis(self._check_input(us, batched=True), 1, 0)  # (T, M, N_input)
        cell_diff, cell_nondiff, cell_static = _split(self.cell)
        read_diff, read_nondiff, read_static = _split(self.readout)

        def cell_fn(p, data, h):
            nondiff, u = data
            return jax.vmap(eqx.combine(p, nondiff, cell_static))(h, u)

        def read_fn(p, data, hs):
            return jax.vmap(jax.vmap(eqx.combine(p, data, read_static)))(hs)

        box = []

        def step(h, u):
            h, stored, spec = linearise(cell_fn, cell_diff, (cell_nondiff, u), h)
            box.append(spec)
            return h, (h, stored)

        h0 = jnp.broadcast_to(self.initial_state, (us.shape[1],) + self.initial_state.shape)
        _, (hs, stored) = lax.scan(step, h0, us)
        ys, read_stored, read_spec = linearise(read_fn, read_diff, read_nondiff, hs)
        pullback = _RecurrentPullback(
            (cell_diff, cell_nondiff, us),
            stored,
            box[-1],
            (read_diff, read_nondiff),
            read_stored,
            read_spec,
            eqx.filter(self, eqx.is_inexact_array),
        )
        return jnp.moveaxis(ys, 0, 1), pullback

    def costate_sweep(
        self, us: Float[ArrayLike, "time n_in"], dC_dys: Float[ArrayLike, "time n_out"]
    ):
        """Backpropagation through time for one sequence: λ(0..T) (T+1, N_state), ∂C/∂W."""
        us = self._check_input(us, batched=False)
        _, pullback = self.costate_pullback(us[None])
        costates, grad = pullback(jnp.asarray(dC_dys)[None])
        return costates[0], grad


class _RecurrentPullback(eqx.Module):
    cell_known: tuple
    stored: list
    spec: tuple = eqx.field(static=True)
    read_known: tuple
    read_stored: list
    read_spec: tuple = eqx.field(static=True)
    template: RecurrentNetwork

    def __call__(self, dC_dys):
        read_diff, read_nondiff = self.read_known
        read_grad, jumps = rebuild(self.read_stored, self.read_spec, read_diff, read_nondiff)(
            jnp.moveaxis(dC_dys, 1, 0)
        )
        cell_diff, cell_nondiff, us = self.cell_known

        def step(carry, xs):
            lam, grad = carry
            jump, u, stored = xs
            lam = lam + jump
            g, lam_prev = rebuild(stored, self.spec, cell_diff, (cell_nondiff, u))(lam)
            grad = jtu.tree_map(jnp.add, grad, g)
            return (lam_prev, grad), lam

        lam_T = jnp.zeros_like(jumps[0])
        zero_grad = jtu.tree_map(jnp.zeros_like, cell_diff)
        (lam0, cell_grad), lams = lax.scan(
            step, (lam_T, zero_grad), (jumps, us, self.stored), reverse=True
        )
        costates = jnp.moveaxis(jnp.concatenate([lam0[None], lams]), 0, 1)
        grad = eqx.tree_at(
            lambda n: (n.cell, n.readout, n.initial_state),
            self.template,
            (cell_grad, read_grad, jnp.sum(lam0, axis=0)),
        )
        return costates, grad
