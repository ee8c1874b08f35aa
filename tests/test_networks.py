"""Layered and recurrent networks: forward passes, states, stacking, initialisation, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest


def identity(z):
    return z


def test_dense_forward_and_states(getkey):
    activations = [jnp.tanh, jax.nn.sigmoid, jax.nn.sigmoid, identity]
    net = deepest.LayeredNetwork([3, 6, 6, 6, 2], activations, key=getkey(), bias_init="normal")
    # The two sigmoid 6→6 layers differ only in their weights: stored stacked, run by scan.
    assert net.stack_lengths == (1, 2, 1)
    assert net.layers[1].weight.shape == (2, 6, 6)
    assert net.depth == 4 and net.widths == (3, 6, 6, 6, 2)
    x = jr.normal(getkey(), (3,))
    z = x
    expected = [x]
    for i, activation in enumerate(activations):
        layer = net.layer(i)
        z = activation(layer.weight @ z + layer.bias)
        expected.append(z)
    states = net.states(x)
    assert len(states) == 5
    for s, e in zip(states, expected, strict=True):
        assert jnp.allclose(s, e, rtol=1e-14, atol=1e-15)
    assert jnp.allclose(net(x), expected[-1], rtol=1e-14)
    assert jnp.allclose(jax.jit(lambda n, x: n(x))(net, x), expected[-1], rtol=1e-14)


def test_residual_network_is_euler_steps(getkey):
    depth, horizon = 20, 2.0
    h = horizon / depth
    net = deepest.LayeredNetwork([4] * (depth + 1), jnp.tanh, key=getkey(), residual_step=h)
    assert net.stack_lengths == (depth,)
    x = jr.normal(getkey(), (4,))
    states = net.states(x)
    for i in (0, 7, depth - 1):
        step = states[i] + h * net.layer(i)(states[i])
        assert jnp.allclose(states[i + 1], step, rtol=1e-14, atol=1e-15)


def test_custom_layers_and_plain_autodiff(getkey):
    k = jr.split(getkey(), 3)
    layers = [eqx.nn.Linear(3, 5, key=k[0]), jnp.tanh, eqx.nn.Linear(5, 2, key=k[1])]
    net = deepest.LayeredNetwork(layers=layers)
    assert net.widths == (3, 5, 5, 2)
    x = jr.normal(k[2], (3,))
    assert jnp.allclose(net(x), layers[2](jnp.tanh(layers[0](x))), rtol=1e-14)
    # The forward pass is ordinary JAX: jax.grad through it works as for any module.
    grad = jax.grad(lambda n: jnp.sum(n(x) ** 2))(net)
    assert grad.layers[0].weight.shape == (5, 3)


@pytest.mark.parametrize("init", ["normal", "uniform", "zeros", "callable"])
def test_initialisation(init, getkey):
    n_in = 400
    if init == "callable":

        def scheme(key, shape, dtype):
            return jr.uniform(key, shape, dtype, -0.1, 0.1)
    else:
        scheme = init
    net = deepest.LayeredNetwork([n_in, 300], key=getkey(), init=scheme)
    w = np.asarray(net.layers[0].weight)
    assert w.shape == (300, n_in)
    assert np.all(np.asarray(net.layers[0].bias) == 0)
    # 120 000 draws: sample moments within a few percent.
    if init == "normal":
        assert abs(w.std() * np.sqrt(n_in) - 1) < 0.02
    elif init == "uniform":
        bound = 1 / np.sqrt(n_in)
        assert np.all(np.abs(w) <= bound) and abs(w.std() - bound / np.sqrt(3)) < 0.02 * bound
    elif init == "zeros":
        assert np.all(w == 0)
    else:
        assert np.all(np.abs(w) <= 0.1) and abs(w.std() - 0.1 / np.sqrt(3)) < 0.002


def test_recurrent_forward_and_states(getkey):
    rnn = deepest.RecurrentNetwork(2, 5, 3, key=getkey())
    us = jr.normal(getkey(), (8, 2))
    cell = rnn.cell
    h, hs, ys = rnn.initial_state, [rnn.initial_state], []
    for u in us:
        h = jnp.tanh(cell.weight_state @ h + cell.weight_input @ u + cell.bias)
        hs.append(h)
        ys.append(rnn.readout.weight @ h + rnn.readout.bias)
    assert jnp.allclose(rnn.states(us), jnp.stack(hs), rtol=1e-14, atol=1e-15)
    assert jnp.allclose(rnn(us), jnp.stack(ys), rtol=1e-14, atol=1e-15)


def test_bad_construction_and_input(getkey):
    with pytest.raises(TypeError, match="activation"):
        deepest.LayeredNetwork([3, 4, 2], "tanh", key=getkey())
    with pytest.raises(TypeError, match=r"activation\[1\]"):
        deepest.LayeredNetwork([3, 4, 2], [jnp.tanh, 1.0], key=getkey())
    with pytest.raises(ValueError, match="one per layer"):
        deepest.LayeredNetwork([3, 4, 2], [jnp.tanh], key=getkey())
    with pytest.raises(ValueError, match="positive widths"):
        deepest.LayeredNetwork([3], key=getkey())
    with pytest.raises(ValueError, match="key"):
        deepest.LayeredNetwork([3, 2])
    with pytest.raises(ValueError, match="keeps the width"):
        deepest.LayeredNetwork([3, 4], key=getkey(), residual_step=0.1)
    with pytest.raises(ValueError, match="positive step"):
        deepest.LayeredNetwork([3, 3], key=getkey(), residual_step=-0.1)
    with pytest.raises(ValueError, match="init"):
        deepest.LayeredNetwork([3, 3], key=getkey(), init="glorot")
    k = jr.split(getkey())
    with pytest.raises(ValueError, match=r"layers\[1\] cannot map a state of width 4"):
        deepest.LayeredNetwork(
            layers=[eqx.nn.Linear(3, 4, key=k[0]), eqx.nn.Linear(5, 2, key=k[1])]
        )
    with pytest.raises(ValueError, match="`key` configure dense layers"):
        deepest.LayeredNetwork(layers=[eqx.nn.Linear(3, 4, key=k[0])], key=k[1])
    with pytest.raises(TypeError, match=r"layers\[0\]"):
        deepest.LayeredNetwork(layers=["dense"])
    net = deepest.LayeredNetwork([3, 4, 2], key=getkey())
    with pytest.raises(ValueError, match="width N_0 = 3"):
        net(jnp.ones(4))
    with pytest.raises(ValueError, match="width N_0 = 3"):
        net.states(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="width N_0 = 3"):
        deepest.costate_sweep(net, jnp.ones(2), jnp.ones(2))
    rnn = deepest.RecurrentNetwork(2, 4, 1, key=getkey())
    with pytest.raises(ValueError, match=r"\(T, N_input\)"):
        rnn(jnp.ones((5, 3)))
    with pytest.raises(ValueError, match="T = 0"):
        rnn(jnp.ones((0, 2)))
    with pytest.raises(TypeError, match="activation"):
        deepest.RecurrentNetwork(2, 4, 1, None, key=getkey())
    with pytest.raises(ValueError, match="readout"):
        deepest.RecurrentNetwork(cell=lambda h, u: h)
