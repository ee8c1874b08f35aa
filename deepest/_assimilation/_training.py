"""Training a network as data assimilation: the layers are time, the training pairs are
measurements at the input and output layers (Abarbanel, Rozdeba & Shirman 2018)."""

import abc
import functools
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._annealing import AbstractProblem, Block
from .._data import concrete
from .._misc import default_float
from .._networks import AbstractCostateNetwork, CostateVJP, LayeredNetwork, RecurrentNetwork
from ._checks import check_weight

WeightInit = str | Callable[[PRNGKeyArray], eqx.Module]


def _as_data(a, name: str) -> Array:
    known = concrete(a)
    dtype = a.dtype if known is None else known.dtype
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"`{name}` must be a real numeric array; got dtype {dtype}.")
    if known is not None and not np.all(np.isfinite(known)):
        raise ValueError(f"`{name}` contains NaN or infinite values; remove or repair them.")
    a = jnp.asarray(a if known is None else known)
    return a if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(default_float())


def _is_one_hot(targets: np.ndarray) -> bool:
    t = np.asarray(targets)
    return (
        t.ndim >= 2
        and t.shape[-1] >= 2
        and bool(np.all((t == 0) | (t == 1)))
        and bool(np.all(t.sum(axis=-1) == 1))
    )


def _mse(outputs, targets):
    return jnp.mean((outputs - targets) ** 2)


def _accuracy(outputs, targets):
    hit = jnp.argmax(outputs, axis=-1) == jnp.argmax(targets, axis=-1)
    return jnp.mean(hit.astype(outputs.dtype))


def _names(prefix: str, n: int) -> list[str]:
    digits = max(3, len(str(n - 1)))
    return [f"{prefix}{i:0{digits}d}" for i in range(n)]


def _named(prefix: str, arrays: list) -> dict[str, Array]:
    return dict(zip(_names(prefix, len(arrays)), arrays, strict=True))


class AbstractTraining(AbstractProblem):
    """The action of a network trained by data assimilation; built by [`deepest.training`][].

    Holds what every kind of network shares: the training pairs, R_m, the validation pair,
    the initial weights, and the results (`to_model`, `errors`, `views`). Each kind of
    network provides the states of its path and the two terms of its action:

    - `data_rank`, `data_shape`: the rank and the description of the batched data.
    - `rm_shapes`, `rm_description`: the shapes `rm` may take, in words.
    - `check_shapes(net, inputs, targets, what) -> widths`: the state widths, checking
      that the data fit the network.
    - `initial_states(net, key)`: the states of a path's initial guess.
    - `residual_blocks` (the action, see [`deepest.AbstractProblem`][]), `expected_action`.
    """

    net: AbstractCostateNetwork
    inputs: Float[Array, "M ..."]
    targets: Float[Array, "M ..."]
    rm: Float[Array, "*pair"]
    validation: tuple[Array, Array] | None
    widths: tuple[int, ...] = eqx.field(static=True)
    noise: float | None = eqx.field(static=True)
    weight_init: WeightInit = eqx.field(static=True)
    state_noise: float = eqx.field(static=True)
    classification: bool = eqx.field(static=True)

    data_rank: eqx.AbstractClassVar[int]
    data_shape: eqx.AbstractClassVar[str]
    rm_shapes: eqx.AbstractClassVar[tuple[tuple[int, ...], ...]]
    rm_description: eqx.AbstractClassVar[str]

    def __init__(
        self,
        net: AbstractCostateNetwork,
        inputs: ArrayLike,
        targets: ArrayLike,
        rm: ArrayLike,
        validation: tuple[ArrayLike, ArrayLike] | None = None,
        *,
        noise: float | None = None,
        weight_init: WeightInit = "resample",
        state_noise: float = 0.1,
        classification: bool | None = None,
    ):
        inputs = _as_data(inputs, "inputs")
        targets = _as_data(targets, "targets")
        for name, a in (("inputs", inputs), ("targets", targets)):
            if a.ndim != self.data_rank:
                raise ValueError(f"`{name}` must have shape {self.data_shape}; got {a.shape}.")
        if inputs.shape[0] == 0:
            raise ValueError("There are no training pairs (M = 0); give at least one.")
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"{inputs.shape[0]} inputs but {targets.shape[0]} targets; give one target "
                "per input."
            )
        self.widths = self.check_shapes(net, inputs, targets, "")
        rm = check_weight(rm, "rm", self.rm_shapes, self.rm_description)
        if validation is not None:
            if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
                raise TypeError("`validation` must be a pair (inputs, targets).")
            vx = _as_data(validation[0], "validation inputs")
            vy = _as_data(validation[1], "validation targets")
            rank = self.data_rank
            if vx.ndim != rank or vy.ndim != rank or vx.shape[0] != vy.shape[0] or not vx.shape[0]:
                raise ValueError(
                    f"`validation` must be (inputs, targets) of shapes {self.data_shape} with "
                    f"the same M ≥ 1; got {vx.shape} and {vy.shape}."
                )
            self.check_shapes(net, vx, vy, "validation ")
            validation = (vx, vy)
        if noise is not None and not (np.isfinite(noise) and noise > 0):
            raise ValueError(f"`noise` must be a positive number or None; got {noise}.")
        if not (isinstance(weight_init, str) or callable(weight_init)):
            raise TypeError(
                "`weight_init` must be 'resample', 'network' or a function key -> network."
            )
        if isinstance(weight_init, str) and weight_init not in ("resample", "network"):
            raise ValueError(
                f"`weight_init` must be 'resample', 'network' or a function key -> network; got "
                f"{weight_init!r}."
            )
        if not (np.isfinite(state_noise) and state_noise >= 0):
            raise ValueError(f"`state_noise` must be non-negative; got {state_noise}.")
        self.net = net
        self.inputs = inputs
        self.targets = targets
        self.rm = rm
        self.validation = validation
        self.noise = None if noise is None else float(noise)
        self.weight_init = weight_init
        self.state_noise = float(state_noise)
        if classification is None:
            # traced targets cannot be read: no accuracy unless asked for
            known = concrete(targets)
            classification = known is not None and _is_one_hot(known)
        self.classification = bool(classification)

    @abc.abstractmethod
    def check_shapes(self, net, inputs: Array, targets: Array, what: str) -> tuple[int, ...]:
        """The state widths, raising `ValueError` if the `what`-data do not fit `net`."""

    @abc.abstractmethod
    def initial_states(self, net: AbstractCostateNetwork, key: PRNGKeyArray) -> PyTree[Array]:
        """The states of a path's initial guess, for the weights of `net`."""

    # -- unknowns ---------------------------------------------------------------------
    @property
    def n_pairs(self) -> int:
        """M, the number of training pairs."""
        return self.inputs.shape[0]

    def to_model(self, unknowns: PyTree[ArrayLike]) -> AbstractCostateNetwork:
        """The network with the weights of one path's `unknowns`."""
        weights = unknowns["weights"]
        return self.net.with_weights([jnp.asarray(weights[n]) for n in _names("w", len(weights))])

    def _initial_network(self, key):
        if self.weight_init == "network":
            return self.net
        if callable(self.weight_init):
            net = self.weight_init(key)
            ours = eqx.filter(self.net, eqx.is_inexact_array)
            theirs = eqx.filter(net, eqx.is_inexact_array)
            shapes = lambda t: jtu.tree_map(lambda a: a.shape, t)  # noqa: E731
            if jtu.tree_structure(ours) != jtu.tree_structure(theirs) or shapes(ours) != shapes(
                theirs
            ):
                raise ValueError(
                    "`weight_init(key)` must return a network with the structure and weight "
                    "shapes of `net`."
                )
            dtypes = [a.dtype for a in jtu.tree_leaves(ours)]
            leaves = [a.astype(d) for a, d in zip(jtu.tree_leaves(theirs), dtypes, strict=True)]
            return self.net.with_weights(leaves)
        leaves = self.net.weights()
        keys = jr.split(key, max(len(leaves), 1))[: len(leaves)]
        return self.net.with_weights(
            [
                jnp.sqrt(jnp.mean(a**2)) * jr.normal(k, a.shape, a.dtype)
                for a, k in zip(leaves, keys, strict=True)
            ]
        )

    def init(self, key: PRNGKeyArray) -> PyTree[Array]:
        """Weights by `weight_init`; states the forward pass plus noise (see
        [`deepest.training`][])."""
        k_weights, k_states = jr.split(key)
        net = self._initial_network(k_weights)
        return {
            "states": self.initial_states(net, k_states),
            "weights": _named("w", net.weights()),
        }

    # -- the action -------------------------------------------------------------------
    def check_rf(self, rf: ArrayLike) -> None:
        if np.shape(rf) != ():
            raise ValueError(
                f"`rf0` must be a scalar for network training; got shape {np.shape(rf)}."
            )

    # -- results ----------------------------------------------------------------------
    def errors(self, net: eqx.Module, inputs: ArrayLike, targets: ArrayLike) -> dict[str, Array]:
        """`error` (mean squared error of the forward pass `net(u)` against the targets)
        and, for classification, `accuracy`."""
        outputs = jax.vmap(net)(jnp.asarray(inputs))
        out = {"error": _mse(outputs, targets)}
        if self.classification:
            out["accuracy"] = _accuracy(outputs, targets)
        return out

    def uncertainty_views(self, unknowns: PyTree[Array], std: PyTree[Array]) -> dict[str, Array]:
        """`weights_std`: {"w000": (n_paths, …), …}, the weights' standard deviations."""
        return {"weights_std": std["weights"]}

    def views(self, unknowns: PyTree[Array]) -> dict[str, Array]:
        """Per path: `train_error` (MSE of the forward pass of the path's network from the
        data inputs against the targets), `validation_error`, and with classification
        `train_accuracy`, `validation_accuracy`."""

        def one(u):
            net = self.to_model(u)
            out = {f"train_{k}": v for k, v in self.errors(net, self.inputs, self.targets).items()}
            if self.validation is not None:
                val = self.errors(net, *self.validation)
                out.update({f"validation_{k}": v for k, v in val.items()})
            return out

        return jax.vmap(one)(unknowns)


class LayeredTraining(AbstractTraining):
    """The action of a [`deepest.LayeredNetwork`][]: measurements at the input and output
    layers, the model error of every layer map (see [`deepest.training`][]).

    The states are a dict {"x000": (M, N_0), …}, one entry per layer.
    """

    data_rank: ClassVar[int] = 2
    data_shape: ClassVar[str] = "(M, N)"
    rm_shapes: ClassVar[tuple[tuple[int, ...], ...]] = ((), (2,))
    rm_description: ClassVar[str] = "a scalar or the pair (R_m input, R_m output)"

    def check_shapes(self, net, inputs, targets, what):
        """The widths N_0..N_L, checking the data's."""
        try:
            states = jax.eval_shape(
                net.states, jax.ShapeDtypeStruct(inputs.shape[1:], inputs.dtype)
            )
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"The {what}inputs have width {inputs.shape[1]}, which the network's input "
                f"layer does not take: {err}"
            ) from err
        widths = tuple(s.shape[0] for s in states)
        if targets.shape[1] != widths[-1]:
            raise ValueError(
                f"The {what}targets have width {targets.shape[1]} but the network's output "
                f"layer has N_L = {widths[-1]}; give one target per output neuron."
            )
        return widths

    def initial_states(self, net, key):
        """The forward pass plus noise; the input and output layers at the data
        (varanneal's `init_to_data`)."""
        states = list(jax.vmap(net.states)(self.inputs))
        keys = jr.split(key, len(states))
        states = [
            x + self.state_noise * jr.normal(k, x.shape, x.dtype)
            for x, k in zip(states, keys, strict=True)
        ]
        states[0], states[-1] = self.inputs, self.targets
        return _named("x", states)

    def _states(self, unknowns) -> list[Array]:
        states = unknowns["states"]
        return [states[n] for n in _names("x", len(states))]

    def _input_misfit(self, unknowns: PyTree[Array]) -> Array:
        return self._states(unknowns)[0] - self.inputs

    def _output_misfit(self, unknowns: PyTree[Array]) -> Array:
        return self._states(unknowns)[-1] - self.targets

    def _layer_residuals(self, unknowns: PyTree[Array]) -> tuple[Array, ...]:
        """x^k(l+1) − f_l(x^k(l)) of every layer, one array per run of stacked layers."""
        net = self.to_model(unknowns)
        states = self._states(unknowns)
        h = net.residual_step
        out = []
        first = 0  # index of the segment's first layer
        for layer, n in zip(net.layers, net.stack_lengths, strict=True):
            # Given the states, every layer's residual is independent of the others: a
            # stacked run of layers is one vmap over the layer axis, not a scan.
            params, static = eqx.partition(layer, eqx.is_array)

            def forward(p, x, static=static):
                y = jax.vmap(eqx.combine(p, static))(x)
                return y if h is None else x + h * y

            if n == 1:
                out.append(states[first + 1] - forward(params, states[first]))
            else:
                x_in = jnp.stack(states[first : first + n])
                x_out = jnp.stack(states[first + 1 : first + n + 1])
                out.append(x_out - jax.vmap(forward)(params, x_in))
            first += n
        return tuple(out)

    def residual_blocks(self) -> tuple[Block, ...]:
        """The input and output misfits x^k(0) − u^k, x^k(L) − v^k (weights R_m, or the
        pair's R_m input and R_m output; averaged together over M·(N_0 + N_L)) and every
        layer's residual x^k(l+1) − f_l(x^k(l)) (weight R_f, averaged over
        M·Σ_{l≥1} N_l)."""
        m = self.n_pairs
        n_m = m * (self.widths[0] + self.widths[-1])
        rm_in, rm_out = (self.rm, self.rm) if self.rm.ndim == 0 else (self.rm[0], self.rm[1])
        return (
            Block(self._input_misfit, n_m, rm_in),
            Block(self._output_misfit, n_m, rm_out),
            Block(self._layer_residuals, m * sum(self.widths[1:]), term="model"),
        )

    @property
    def expected_action(self) -> float | None:
        """R_m σ² (averaged over the measured entries), when the noise σ is known."""
        if self.noise is None:
            return None
        rm = np.asarray(self.rm)
        if rm.ndim == 1:
            n_in, n_out = self.widths[0], self.widths[-1]
            rm = (rm[0] * n_in + rm[1] * n_out) / (n_in + n_out)
        return float(rm * self.noise**2)


class RecurrentTraining(AbstractTraining):
    """The action of a [`deepest.RecurrentNetwork`][]: the targets measured through the
    readout at every step, the model error of every step (see [`deepest.training`][]).

    The states are one (M, T, N_h) array, h(1..T) of every sequence.
    """

    data_rank: ClassVar[int] = 3
    data_shape: ClassVar[str] = "(M, T, N)"
    rm_shapes: ClassVar[tuple[tuple[int, ...], ...]] = ((),)
    rm_description: ClassVar[str] = "a scalar for a recurrent network"

    def check_shapes(self, net, inputs, targets, what):
        """The widths (N_h, N_y), checking the data's."""
        try:
            out = jax.eval_shape(net, jax.ShapeDtypeStruct(inputs.shape[1:], inputs.dtype))
        except (ValueError, TypeError) as err:
            raise ValueError(f"The {what}inputs do not fit the network: {err}") from err
        if out.shape != targets.shape[1:]:
            raise ValueError(
                f"The network outputs shape {out.shape} per sequence but the {what}targets "
                f"have shape {targets.shape[1:]}; give one target per output and step."
            )
        return (net.initial_state.shape[0], out.shape[1])

    def initial_states(self, net, key):
        """The forward pass h(1..T) plus noise."""
        hs = jax.vmap(net.states)(self.inputs)[:, 1:]
        return hs + self.state_noise * jr.normal(key, hs.shape, hs.dtype)

    def _readout_misfit(self, unknowns: PyTree[Array]) -> Array:
        """g(h^k(t+1)) − y^k(t)."""
        net = self.to_model(unknowns)
        return jax.vmap(jax.vmap(net.readout))(unknowns["states"]) - self.targets

    def _step_residuals(self, unknowns: PyTree[Array]) -> Array:
        """h^k(t+1) − f(h^k(t), u^k(t))."""
        net = self.to_model(unknowns)
        hs = unknowns["states"]
        h0 = jnp.broadcast_to(net.initial_state, (hs.shape[0], 1, hs.shape[2]))
        previous = jnp.concatenate([h0, hs[:, :-1]], axis=1)
        return hs - jax.vmap(jax.vmap(net.cell))(previous, self.inputs)

    def residual_blocks(self) -> tuple[Block, Block]:
        """The readout misfit g(h^k(t+1)) − y^k(t) (weight R_m, averaged over M·T·N_y) and
        every step's residual h^k(t+1) − f(h^k(t), u^k(t)) (weight R_f, averaged over
        M·T·N_h)."""
        m, t = self.targets.shape[:2]
        return (
            Block(self._readout_misfit, m * t * self.widths[1], self.rm),
            Block(self._step_residuals, m * t * self.widths[0], term="model"),
        )

    @property
    def expected_action(self) -> float | None:
        """R_m σ², when the noise σ is known."""
        return None if self.noise is None else float(np.asarray(self.rm) * self.noise**2)


def training(
    net: AbstractCostateNetwork,
    inputs: ArrayLike,
    targets: ArrayLike,
    rm: ArrayLike,
    validation: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    noise: float | None = None,
    weight_init: WeightInit = "resample",
    state_noise: float = 0.1,
    classification: bool | None = None,
) -> AbstractTraining:
    r"""Training a network by data assimilation: the action of the layered network.

    With M training pairs (u^k, v^k), widths N_0..N_L and layer maps f_l, the unknowns are
    every layer's state x^k(l) of every pair and the weights W, shared by all pairs:

    $$A(X, W; R_f) = \frac{R_m}{M (N_0 + N_L)} \sum_k \big(|x^k(0) − u^k|^2
        + |x^k(L) − v^k|^2\big)
      + \frac{R_f}{M \sum_{l≥1} N_l} \sum_k \sum_{l=0}^{L-1} |x^k(l+1) − f_l(x^k(l); W(l))|^2$$

    (varanneal's `va_nnet` normalisation: each term is a mean over its entries). With
    R_m = 1/σ² for data noise σ, a path consistent with the data has a measurement term ≈ 1.
    As R_f → ∞ the model holds exactly and minimising the action is ordinary training on the
    output misfit. Stationarity in the states gives the canonical momentum
    p(l+1) ∝ R_f (x(l+1) − f_l(x(l))) with p(l) = (∂f_l/∂x(l))ᵀ p(l+1) and p(L) = −∂C/∂x(L):
    backprop's costate is λ = −p ([`deepest.costate_sweep`][]).

    For a [`deepest.RecurrentNetwork`][] (h(t+1) = f(h(t), u(t)), y(t) = g(h(t+1))), time is
    the sequence index, the inputs u drive the model (they are not unknowns), and the targets
    are measured through the readout at every step:

    $$A = \frac{R_m}{M T N_y} \sum_{k,t} |g(h^k(t+1)) − y^k(t)|^2
        + \frac{R_f}{M T N_h} \sum_{k,t} |h^k(t+1) − f(h^k(t), u^k(t))|^2$$

    with h^k(0) the network's (trained) `initial_state`.

    The unknowns are a dict: `states` ({"x000": (M, N_0), …, one per layer}, or for a
    recurrent network one (M, T, N_h) array) and `weights` ({"w000": …}: the floating-point
    arrays of the network, in `jax.tree_util` order). Initial guess of a path
    (`init(key)`): weights by `weight_init`; the hidden states are the forward pass of those
    weights from the data inputs plus N(0, `state_noise`²) noise, and the input and output
    layers start at the data (varanneal's `init_to_data`).

    Each kind of network has its own action: `training` builds the problem that belongs to
    the kind of `net`, a [`deepest.LayeredTraining`][] or a [`deepest.RecurrentTraining`][]
    (both [`deepest.AbstractTraining`][]).

    **Arguments:**

    - `net`: a [`deepest.LayeredNetwork`][] (or [`deepest.RecurrentNetwork`][]); its
      structure and activations are kept, its weights are the template of the unknowns.
    - `inputs`: (M, N_0) data inputs u (recurrent: (M, T, N_input) sequences).
    - `targets`: (M, N_L) data outputs v (recurrent: (M, T, N_output)).
    - `rm`: R_m > 0, a scalar or the pair (R_m at the input, R_m at the output) (recurrent:
      a scalar).
    - `validation`: an optional `(inputs, targets)` pair; its error is reported per path.
    - `noise`: the data noise σ, if known (sets `expected_action`).
    - `weight_init`: `"resample"` (default: every floating-point array of `net` redrawn
      i.i.d. N(0, s²), s its root-mean-square, so the scale of the network's initialisation
      is kept and all-zero arrays such as zero biases stay zero), `"network"` (every path
      starts at `net`'s weights), or a function `key -> network` of `net`'s structure (e.g.
      `lambda k: deepest.LayeredNetwork(widths, key=k)`).
    - `state_noise`: the standard deviation of the noise on the initial hidden states.
    - `classification`: report accuracy (argmax of output against argmax of target);
      default: when the targets are one-hot (not for targets traced under `jax.jit`,
      `jax.grad` or `jax.vmap`, whose values cannot be read).

    **Returns:** the annealing problem, a [`deepest.AbstractTraining`][].

    **Example:**

    ```python
    net = deepest.LayeredNetwork([25, 30, 4], jax.nn.sigmoid, key=jr.key(0))
    problem = deepest.training(net, images, labels, rm=1.0, validation=(val_x, val_y))
    result = deepest.anneal(problem, deepest.AnnealSchedule(1e-2, 1.5, 40), 16, jr.key(1))
    trained = result.model()          # the network of the lowest-action path
    result.validation_accuracy        # one value per path
    ```
    """
    if isinstance(net, CostateVJP):
        net = net.network
    problem = _action_of(net)
    return problem(
        net,
        inputs,
        targets,
        rm,
        validation,
        noise=noise,
        weight_init=weight_init,
        state_noise=state_noise,
        classification=classification,
    )


@functools.singledispatch
def _action_of(net) -> type[AbstractTraining]:
    """The training problem of the kind of `net`, registered once per network class."""
    raise TypeError(
        "`net` must be a deepest.LayeredNetwork or deepest.RecurrentNetwork; got "
        f"{type(net).__name__}."
    )


_action_of.register(LayeredNetwork, lambda net: LayeredTraining)
_action_of.register(RecurrentNetwork, lambda net: RecurrentTraining)
