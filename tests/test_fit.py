"""Training with optax and costate gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
import pytest

import deepest


def identity(z):
    return z


def mse(y_hat, y):
    return jnp.mean((y_hat - y) ** 2)


def regression(key, n):
    x = jnp.linspace(-2.0, 2.0, n)[:, None]
    return x, jnp.sin(2 * x) + 0.01 * jr.normal(key, x.shape)


def small_net(key):
    return deepest.LayeredNetwork([1, 12, 12, 1], [jnp.tanh, jnp.tanh, identity], key=key)


def test_fit_decreases_loss(getkey):
    x, y = regression(getkey(), 48)
    net = small_net(getkey())
    validation = regression(getkey(), 17)
    trained, history = deepest.fit(
        net,
        mse,
        (x, y),
        optax.adam(2e-2),
        300,
        getkey(),
        batch_size=16,
        validation=validation,
        validation_every=100,
        progress=False,
    )
    initial = mse(jax.vmap(net)(x), y)
    final = mse(jax.vmap(trained)(x), y)
    assert history.train_loss.shape == (300,)
    assert final < 0.05 * initial
    assert history.validation_steps.tolist() == [0, 100, 200, 300]
    assert jnp.allclose(
        history.validation_loss[0], mse(jax.vmap(net)(validation[0]), validation[1])
    )
    assert jnp.allclose(
        history.validation_loss[-1], mse(jax.vmap(trained)(validation[0]), validation[1])
    )
    assert history.validation_loss[-1] < 0.05 * history.validation_loss[0]


@pytest.mark.parametrize("batch_size", [None, 5])
def test_fit_matches_handwritten_optax_loop(batch_size, getkey):
    # Same data, same minibatch order (the documented rule), jax.grad instead of the sweep.
    x, y = regression(getkey(), 13)
    net = small_net(getkey())
    key = getkey()
    optimiser = optax.adam(1e-2)
    steps = 7
    trained, history = deepest.fit(
        net, mse, (x, y), optimiser, steps, key, batch_size=batch_size, progress=False
    )

    params, static = eqx.partition(net, eqx.is_inexact_array)
    opt_state = optimiser.init(params)

    def loss_fn(p, xb, yb):
        return mse(jax.vmap(eqx.combine(p, static))(xb), yb)

    losses = []
    for i in range(steps):
        if batch_size is None:
            xb, yb = x, y
        else:
            epoch, b = divmod(i, 13 // batch_size)
            order = jr.permutation(jr.fold_in(key, epoch), 13)
            index = order[b * batch_size : (b + 1) * batch_size]
            xb, yb = x[index], y[index]
        loss, grad = jax.value_and_grad(loss_fn)(params, xb, yb)
        with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean
            updates, opt_state = optimiser.update(grad, opt_state, params)
            params = optax.apply_updates(params, updates)
        losses.append(loss)
    assert jnp.allclose(history.train_loss, jnp.stack(losses), rtol=1e-12)
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(params), strict=True):
        assert jnp.allclose(a, b, rtol=1e-10, atol=1e-13)


def test_fit_recurrent(getkey):
    # Backpropagation through time by the costate sweep: learn a running mean.
    us = jr.normal(getkey(), (32, 10, 1))
    ys = jnp.cumsum(us, axis=1) / jnp.arange(1.0, 11.0)[None, :, None]
    rnn = deepest.RecurrentNetwork(1, 8, 1, key=getkey())
    trained, history = deepest.fit(
        rnn, mse, (us, ys), optax.adam(1e-2), 150, getkey(), progress=False
    )
    assert history.train_loss[-1] < 0.2 * history.train_loss[0]


def test_fit_bad_input(getkey):
    net = small_net(getkey())
    x, y = regression(getkey(), 8)
    adam = optax.adam(1e-2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        deepest.fit(net, mse, (x.at[3].set(jnp.nan), y), adam, 2, getkey(), progress=False)
    with pytest.raises(ValueError, match="NaN or infinite"):
        deepest.fit(
            net,
            mse,
            (x, y),
            adam,
            2,
            getkey(),
            validation=(x, y.at[0].set(jnp.inf)),
            progress=False,
        )
    with pytest.raises(ValueError, match="M ≥ 1"):
        deepest.fit(net, mse, (x[:0], y[:0]), adam, 2, getkey(), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        deepest.fit(net, mse, (x, y), adam, 2, getkey(), batch_size=9, progress=False)
    with pytest.raises(ValueError, match="one target per input"):
        deepest.fit(net, mse, (x, y[:5]), adam, 2, getkey(), progress=False)
    with pytest.raises(ValueError, match="width N_0 = 1"):
        deepest.fit(net, mse, (jnp.ones((8, 2)), y), adam, 2, getkey(), progress=False)
    with pytest.raises(ValueError, match="targets have shape"):
        deepest.fit(net, mse, (x, jnp.ones((8, 3))), adam, 2, getkey(), progress=False)
    with pytest.raises(TypeError, match="optimiser"):
        deepest.fit(net, mse, (x, y), "adam", 2, getkey(), progress=False)
    with pytest.raises(TypeError, match="pair"):
        deepest.fit(net, mse, x, adam, 2, getkey(), progress=False)
