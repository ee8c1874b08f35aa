"""The recurrent network: one layer map shared across time, fed an input at each step.

Backpropagation through time is the costate sweep with measurements along the sequence.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._misc import default_float, positive_int
from ._layers import Initialiser, Linear, check_callable, initialise
from ._linearise import linearise, rebuild, split_layer
from ._protocol import AbstractCostateNetwork


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


class RecurrentNetwork(AbstractCostateNetwork):
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
            check_callable(cell, "cell", "a module (h, u) -> h'")
            check_callable(readout, "readout", "eqx.nn.Linear(n_state, n_out, key=key)")
            self.cell, self.readout = cell, readout
            self.initial_state = jnp.asarray(initial_state)
            if self.initial_state.ndim != 1:
                raise ValueError("`initial_state` must be one state vector h(0).")
            return
        n_u = positive_int(input_size, "input_size")
        n_h = positive_int(state_size, "state_size")
        n_y = positive_int(output_size, "output_size")
        if key is None:
            raise ValueError("A dense network needs a PRNG `key` for its initial weights.")
        check_callable(activation)
        dtype = default_float(dtype)
        kh, ku, ky = jr.split(key, 3)
        fan_in = n_h + n_u
        zeros = (lambda n: jnp.zeros((n,), dtype)) if use_bias else (lambda n: None)
        self.cell = _ElmanCell(
            initialise(init, kh, (n_h, n_h), dtype, fan_in, "init"),
            initialise(init, ku, (n_h, n_u), dtype, fan_in, "init"),
            zeros(n_h),
            activation,
        )
        self.readout = Linear(initialise(init, ky, (n_y, n_h), dtype, n_h, "init"), zeros(n_y))
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
        cell_diff, cell_nondiff, cell_static = split_layer(self.cell)
        read_diff, read_nondiff, read_static = split_layer(self.readout)

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
