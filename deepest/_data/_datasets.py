"""Data sets for training networks as data assimilation: the twin network, bar images, and a
smooth flow map for "depth as time resolution" (Abarbanel, Rozdeba & Shirman 2018)."""

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._networks import LayeredNetwork

TWIN_VARIANTS = ("tanh", "authors")
"""The generators of [`deepest.twin_generator`][] (`variant`)."""

BAR_POSITIONS = ("centered", "all")
"""Where the bars of [`deepest.bar_images`][] may lie (`positions`)."""


def check_bar_settings(size: int, positions: str) -> None:
    """Raise `ValueError` for a `size` or `positions` of [`deepest.bar_images`][] that no
    image can have (checked by the config layer too, before any compute)."""
    if int(size) != size or size < 3 or size % 2 == 0:
        raise ValueError(f"`size` must be an odd integer ≥ 3 (a centre pixel); got {size}.")
    if positions not in BAR_POSITIONS:
        raise ValueError(
            f"`positions` must be one of {', '.join(map(repr, BAR_POSITIONS))}; got {positions!r}."
        )


def twin_generator(
    key: PRNGKeyArray,
    variant: str = "tanh",
    *,
    width: int = 10,
    n_layers: int = 100,
    gain: float = 1.2,
    dtype=None,
) -> LayeredNetwork:
    """The data-generating network of the twin experiment: `n_layers` layers of `width`
    neurons, no biases.

    - `variant="authors"`: the paper's generator (varanneal's `nnet_twin` example): sigmoid
      layers, weights uniform in [−1/N, 1/N] = [−0.1, 0.1] for N = 10. Kept for reproduction
      only: every layer contracts (|σ'| ≤ 1/4, ‖W‖ small), so the output is nearly the same
      for every input (spread ~1e-14 after 100 layers, far below the noise 0.005) and the
      data cannot tell training methods apart.
    - `variant="tanh"`: tanh layers with weights N(0, g²/N), g = `gain`. With g = 1 the
      signal still fades over 100 layers of width 10 (output spread across inputs ~1e-3,
      below 20σ = 0.1); the default g = 1.2, just past the edge of chaos, keeps a spread of
      0.2–0.4 after 100 layers, ≫ the noise, while the map stays smooth.

    `n_layers` counts the layers as varanneal does, input and output included: the network
    has `n_layers − 1` layer maps, i.e. `n_steps = n_layers − 1` in the package's other
    signatures (e.g. [`deepest.residual_network`][]).

    **Returns:** a [`deepest.LayeredNetwork`][].

    **Example:**

    ```python
    generator = deepest.twin_generator(jr.key(0), "tanh")
    inputs, targets = deepest.noisy_pairs(generator, 10, jr.key(1), noise=0.005)
    ```
    """
    if variant not in TWIN_VARIANTS:
        raise ValueError(f"Unknown twin `variant` {variant!r}; use one of {TWIN_VARIANTS}.")
    if int(n_layers) != n_layers or n_layers < 2:
        raise ValueError(f"`n_layers` must be an integer ≥ 2 (input and output); got {n_layers}.")
    widths = [int(width)] * int(n_layers)
    if variant == "authors":
        return LayeredNetwork(
            widths,
            jax.nn.sigmoid,
            key=key,
            use_bias=False,
            dtype=dtype,
            init=lambda k, shape, dt: jr.uniform(k, shape, dt, -1.0, 1.0) / shape[1],
        )
    if not (np.isfinite(gain) and gain > 0):
        raise ValueError(f"`gain` must be positive; got {gain}.")
    return LayeredNetwork(
        widths,
        jnp.tanh,
        key=key,
        use_bias=False,
        dtype=dtype,
        init=lambda k, shape, dt: gain * jr.normal(k, shape, dt) / np.sqrt(shape[1]),
    )


def standardised_inputs(
    n: int, width: int, key: PRNGKeyArray, dtype=None
) -> Float[Array, "n width"]:
    """`n` inputs with i.i.d. N(0, 1) entries, each shifted and scaled to mean 0 and standard
    deviation 1 over its `width` entries (varanneal's twin inputs)."""
    z = jr.normal(key, (int(n), int(width)), dtype or jnp.zeros(()).dtype)
    return (z - z.mean(axis=1, keepdims=True)) / z.std(axis=1, keepdims=True)


def noisy_pairs(
    fn: Callable[[Array], Array],
    n_pairs: int,
    key: PRNGKeyArray,
    *,
    noise: float,
    inputs: Float[ArrayLike, "n n_in"] | None = None,
    width: int | None = None,
) -> tuple[Float[Array, "n n_in"], Float[Array, "n n_out"]]:
    """Training pairs (u + σ ξ, fn(u) + σ η) of a generator `fn`, with ξ, η ~ N(0, 1).

    The clean inputs u are `inputs` if given, else [`deepest.standardised_inputs`][] of
    `width` (default: the generator's input width `fn.widths[0]`). Noise σ = `noise` is
    added to inputs and outputs alike, as in the twin experiment.

    **Returns:** `(inputs, targets)`, each with a leading axis of `n_pairs`.
    """
    if int(n_pairs) != n_pairs or n_pairs < 1:
        raise ValueError(f"`n_pairs` must be a positive integer; got {n_pairs}.")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"`noise` must be a non-negative number; got {noise}.")
    k_in, k_noise_in, k_noise_out = jr.split(key, 3)
    if inputs is None:
        if width is None:
            widths = getattr(fn, "widths", None)
            if widths is None:
                raise ValueError("Give `width` (or `inputs`): the generator has no `widths`.")
            width = widths[0]
        clean = standardised_inputs(n_pairs, width, k_in)
    else:
        clean = jnp.asarray(inputs)
        if clean.ndim != 2 or clean.shape[0] != n_pairs:
            raise ValueError(f"`inputs` must have shape ({n_pairs}, N_in); got {clean.shape}.")
    outputs = jax.vmap(fn)(clean)
    return (
        clean + noise * jr.normal(k_noise_in, clean.shape, clean.dtype),
        outputs + noise * jr.normal(k_noise_out, outputs.shape, outputs.dtype),
    )


BAR_CLASSES = ("horizontal", "vertical", "diagonal", "antidiagonal")


def _bar_templates(size: int = 5, positions: str = "centered") -> list[list[np.ndarray]]:
    """The noiseless bar images of [`deepest.bar_images`][], per class.

    **Returns:** a list indexed like `bar_images.classes`; entry c is the list of every
    size × size image (entries 0 and 1) of class c that `positions` allows.

    **Example:**

    ```python
    templates = deepest.bar_images.templates(5, "all")
    horizontal = templates[deepest.bar_images.classes.index("horizontal")]  # 5 images
    ```
    """
    c = size // 2
    eye = np.eye(size)
    if positions == "centered":
        h = np.zeros((size, size))
        h[c] = 1
        return [[h], [h.T], [eye], [np.fliplr(eye)]]
    rows = []
    for i in range(size):
        h = np.zeros((size, size))
        h[i] = 1
        rows.append(h)
    # Diagonals of length ≥ 2 (varanneal's "allpositions" images).
    diagonals = [np.eye(size, k=k) for k in range(-(size - 2), size - 1)]
    return [rows, [r.T for r in rows], diagonals, [np.fliplr(d) for d in diagonals]]


def bar_images(
    n_images: int,
    key: PRNGKeyArray,
    *,
    size: int = 5,
    noise: float = 0.35,
    positions: str = "centered",
    dtype=None,
) -> tuple[Float[Array, "n size*size"], Float[Array, "n 4"]]:
    """Noisy images of a bar in one of 4 orientations, with one-hot labels.

    The classes are (`bar_images.classes`, in the order of the labels) horizontal,
    vertical, diagonal (top-left to bottom-right) and antidiagonal. Each image is a
    size × size array of 0 (background) and 1 (bar) plus independent uniform pixel noise in
    [−noise/2, noise/2] (varanneal's `bardata_gen`: `0.35·(0.5 − U)`). Classes are
    balanced: image i has class i mod 4 before a random permutation. With
    `positions="centered"` the bar passes through the centre pixel; with `"all"` it is any
    row, column, or diagonal of length ≥ 2, drawn uniformly.

    **Returns:** `(images, labels)`: images flattened to (n_images, size²), labels one-hot
    (n_images, 4). The noiseless images of every class are `bar_images.templates(size,
    positions)`.

    **Example:**

    ```python
    images, labels = deepest.bar_images(200, jr.key(0))   # (200, 25), (200, 4)
    ```
    """
    if int(n_images) != n_images or n_images < 1:
        raise ValueError(f"`n_images` must be a positive integer; got {n_images}.")
    check_bar_settings(size, positions)
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"`noise` must be a non-negative number; got {noise}.")
    dtype = dtype or jnp.zeros(()).dtype
    templates = _bar_templates(int(size), positions)
    k_perm, k_pos, k_noise = jr.split(key, 3)
    labels = np.asarray(jr.permutation(k_perm, np.arange(n_images) % 4))
    choice = np.asarray(jr.uniform(k_pos, (n_images,)))
    clean = np.stack(
        [
            templates[c][int(u * len(templates[c]))].reshape(-1)
            for c, u in zip(labels, choice, strict=True)
        ]
    )
    images = jnp.asarray(clean, dtype) + noise * (jr.uniform(k_noise, clean.shape, dtype) - 0.5)
    return images, jax.nn.one_hot(labels, 4, dtype=dtype)


# The classes and their noiseless images travel with the function that draws them.
bar_images.classes = BAR_CLASSES
bar_images.templates = _bar_templates


class FlowMap(eqx.Module):
    """The time-T flow x ↦ x(T) = x + ∫_0^T F(x(t)) dt of a smooth field F(x) = tanh(A x + b).

    The data of the "depth as time resolution" experiment: a residual network with layer map
    x + h·tanh(W x + b), h = T/L, is the forward-Euler discretisation of this ODE, so
    networks of every depth L learn the same continuous map. A ~ N(0, scale²/D),
    b ~ N(0, scale²/D); the flow is integrated by diffrax (Tsit5, rtol = atol = 1e-10).

    **Arguments:**

    - `dim`: the state dimension D.
    - `key`: PRNG key for A and b.
    - `horizon`: T.
    - `scale`: the size of A and b.

    **Example:**

    ```python
    flow = deepest.FlowMap(2, jr.key(0), horizon=1.0)
    inputs, targets = deepest.noisy_pairs(flow, 32, jr.key(1), noise=0.01)
    ```
    """

    matrix: Float[Array, "dim dim"]
    bias: Float[Array, " dim"]
    horizon: float = eqx.field(static=True)

    def __init__(
        self, dim: int, key: PRNGKeyArray, *, horizon: float = 1.0, scale: float = 2.0, dtype=None
    ):
        if int(dim) != dim or dim < 1:
            raise ValueError(f"`dim` must be a positive integer; got {dim}.")
        if not (np.isfinite(horizon) and horizon > 0):
            raise ValueError(f"`horizon` must be positive; got {horizon}.")
        dtype = dtype or jnp.zeros(()).dtype
        ka, kb = jr.split(key)
        self.matrix = scale * jr.normal(ka, (dim, dim), dtype) / np.sqrt(dim)
        self.bias = scale * jr.normal(kb, (dim,), dtype) / np.sqrt(dim)
        self.horizon = float(horizon)

    @property
    def widths(self) -> tuple[int, int]:
        return (self.bias.shape[0], self.bias.shape[0])

    def field(self, x: Float[ArrayLike, " dim"]) -> Float[Array, " dim"]:
        """F(x) = tanh(A x + b)."""
        return jnp.tanh(self.matrix @ x + self.bias)

    def __call__(self, x: Float[ArrayLike, " dim"]) -> Float[Array, " dim"]:
        """x(T) from x(0) = x."""
        x = jnp.asarray(x)
        sol = dfx.diffeqsolve(
            dfx.ODETerm(lambda t, y, args: self.field(y)),
            dfx.Tsit5(),
            0.0,
            self.horizon,
            self.horizon / 20,
            x,
            stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-10),
            max_steps=4096,
        )
        return sol.ys[-1]
