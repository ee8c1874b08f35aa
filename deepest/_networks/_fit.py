"""Training by gradient descent with costate-sweep gradients (backpropagation), with optax."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar
from tqdm import tqdm

from ._costate import costate_value_and_grad


class FitHistory(eqx.Module):
    """The record of a training run by [`deepest.fit`][] or [`deepest.train_continuous`][].

    - `train_loss`: the training loss at every step, before that step's update (steps,):
      the minibatch loss in `fit`, the summed minimised action in `train_continuous`.
    - `validation_steps`: the number of updates made when each validation loss was taken.
    - `validation_loss`: the loss on the whole validation set at those points.
    """

    train_loss: Float[Array, " steps"]
    validation_steps: Int[Array, " n_validation"]
    validation_loss: Float[Array, " n_validation"]


def _as_data(data, name):
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"`{name}` must be a pair (inputs, targets).")
    x, y = (jnp.asarray(a) for a in data)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] == 0:
        raise ValueError(
            f"`{name}` needs M ≥ 1 samples along the leading axis; got inputs {x.shape} and "
            f"targets {y.shape}."
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`{name}` has {x.shape[0]} inputs but {y.shape[0]} targets; give one target per input."
        )
    for what, a in (("inputs", x), ("targets", y)):
        if jnp.issubdtype(a.dtype, jnp.inexact) and not np.all(np.isfinite(np.asarray(a))):
            raise ValueError(f"The {name} {what} contain NaN or infinite values.")
    return x, y


def fit(
    net: eqx.Module,
    output_loss: Callable[[Array, Array], Scalar],
    data: tuple[ArrayLike, ArrayLike],
    optimiser: optax.GradientTransformation,
    steps: int,
    key: PRNGKeyArray,
    *,
    batch_size: int | None = None,
    validation: tuple[ArrayLike, ArrayLike] | None = None,
    validation_every: int | None = None,
    progress: bool = True,
) -> tuple[eqx.Module, FitHistory]:
    """Train `net` with `optimiser` on `output_loss`, gradients by the costate sweep.

    Each step takes a minibatch, computes `loss, grad` with
    [`deepest.costate_value_and_grad`][] (the forward pass, then the backward costate sweep),
    and applies `optimiser`'s update to the network's floating-point arrays. The step is one
    jitted function (one compile).

    Minibatches: epoch e visits the samples in the order `jr.permutation(jr.fold_in(key, e), M)`
    in consecutive batches of `batch_size`, dropping the last M mod `batch_size` samples of
    each epoch so every batch has the same shape. With `batch_size=None` every step uses the
    full batch in its given order.

    **Arguments:**

    - `net`: a network with a costate sweep ([`deepest.LayeredNetwork`][],
      [`deepest.RecurrentNetwork`][], …).
    - `output_loss`: `output_loss(y_hat, y) -> scalar` of the batched output and targets.
    - `data`: the training pair `(inputs, targets)`, M samples along the leading axis.
    - `optimiser`: an optax gradient transformation, e.g. `optax.adam(1e-3)`.
    - `steps`: the number of updates.
    - `key`: PRNG key for the minibatch order.
    - `batch_size`: minibatch size (1 ≤ `batch_size` ≤ M), or `None` for full batches.
    - `validation`: an optional `(inputs, targets)` pair, evaluated with `output_loss`.
    - `validation_every`: evaluate the validation loss after every this many updates
      (default: `max(1, steps // 100)`); it is also taken before the first and after the
      last update.
    - `progress`: show a tqdm progress bar.

    **Returns:** `(trained network, history)`, the history a [`deepest.FitHistory`][].

    **Example:**

    ```python
    net = deepest.LayeredNetwork([1, 32, 32, 1], [jnp.tanh, jnp.tanh, lambda z: z],
                                 key=jr.key(0))
    mse = lambda y_hat, y: jnp.mean((y_hat - y) ** 2)
    net, history = deepest.fit(net, mse, (x, y), optax.adam(1e-2), 2000, jr.key(1),
                               batch_size=32)
    ```
    """
    if not callable(output_loss):
        raise TypeError(
            f"`output_loss` must be a function (y_hat, y) -> scalar; got {output_loss!r}."
        )
    if not (hasattr(optimiser, "init") and hasattr(optimiser, "update")):
        raise TypeError(f"`optimiser` must be an optax GradientTransformation; got {optimiser!r}.")
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"`steps` must be non-negative; got {steps}.")
    x, y = _as_data(data, "data")
    n_samples = x.shape[0]
    if batch_size is not None:
        batch_size = int(batch_size)
        if not 1 <= batch_size <= n_samples:
            raise ValueError(
                f"`batch_size` must lie between 1 and the number of samples M = {n_samples}; "
                f"got {batch_size}."
            )
    if validation is not None:
        validation = _as_data(validation, "validation")
    if validation_every is None:
        validation_every = max(1, steps // 100)
    elif int(validation_every) < 1:
        raise ValueError(f"`validation_every` must be ≥ 1; got {validation_every}.")
    validation_every = int(validation_every)

    params, static = eqx.partition(net, eqx.is_inexact_array)
    # The data were checked for non-finite values once, above.
    value_and_grad = costate_value_and_grad(output_loss, check_finite=False)

    @jax.jit
    def step(params, opt_state, index):
        # Gathering inside the jitted step keeps one compile for every minibatch.
        xb, yb = (x, y) if index is None else (x[index], y[index])
        loss, grad = value_and_grad(eqx.combine(params, static), xb, yb)
        # optax mixes int step counts with floats (e.g. Adam's bias correction), which strict
        # dtype promotion refuses; the update is traced with standard promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimiser.update(grad, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, opt_state, loss

    @jax.jit
    def validation_loss(params):
        return output_loss(jax.vmap(eqx.combine(params, static))(validation[0]), validation[1])

    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimiser.init(params)
    batches_per_epoch = 1 if batch_size is None else n_samples // batch_size
    losses, val_steps, val_losses = [], [], []
    order = None
    bar = tqdm(total=steps, disable=not progress, desc="fit")
    for i in range(steps):
        if validation is not None and i % validation_every == 0:
            val_steps.append(i)
            val_losses.append(validation_loss(params))
        index = None
        if batch_size is not None:
            epoch, b = divmod(i, batches_per_epoch)
            if b == 0:
                order = jr.permutation(jr.fold_in(key, epoch), n_samples)
            index = order[b * batch_size : (b + 1) * batch_size]
        params, opt_state, loss = step(params, opt_state, index)
        losses.append(loss)
        bar.update()
        if progress and (i % 50 == 0 or i == steps - 1):
            bar.set_postfix(loss=f"{float(loss):.3e}")
    bar.close()
    if validation is not None and (not val_steps or val_steps[-1] != steps):
        val_steps.append(steps)
        val_losses.append(validation_loss(params))
    dtype = jnp.result_type(float)
    history = FitHistory(
        jnp.stack(losses) if losses else jnp.zeros((0,), dtype),
        jnp.asarray(val_steps, dtype=int),
        jnp.stack(val_losses) if val_losses else jnp.zeros((0,), dtype),
    )
    return eqx.combine(params, static), history
