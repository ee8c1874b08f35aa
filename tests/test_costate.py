"""The explicit costate sweep against JAX's reverse mode, and the envelope theorem."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest
from jax.flatten_util import ravel_pytree

import deepest


def identity(z):
    return z


def mse(y_hat, y):
    return jnp.mean((y_hat - y) ** 2)


def cross_entropy(logits, labels):
    # Integer class labels: targets of one rank less than the output.
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=1))


class TanhLinear(eqx.Module):
    """A user-defined layer: tanh of an `eqx.nn.Linear`."""

    linear: eqx.nn.Linear

    def __call__(self, x):
        return jnp.tanh(self.linear(x))


def custom_layers(key):
    k = jr.split(key, 5)
    return deepest.LayeredNetwork(
        layers=[eqx.nn.Linear(3, 5, key=k[0])]
        + [TanhLinear(eqx.nn.Linear(5, 5, key=k[i])) for i in (1, 2, 3)]
        + [eqx.nn.Linear(5, 2, key=k[4])]
    )


# (name, network builder, loss, M, target kind). Depths 1 to 64, mixed widths and
# activations, stacked and unstacked runs, with and without bias, residual maps, custom
# layers, regression and classification losses.
NETWORKS = [
    ("depth1", lambda k: deepest.LayeredNetwork([4, 3], jax.nn.sigmoid, key=k), mse, 5),
    (
        "depth2-nobias",
        lambda k: deepest.LayeredNetwork([3, 7, 2], [jnp.tanh, identity], key=k, use_bias=False),
        mse,
        4,
    ),
    (
        "depth5-mixed",
        lambda k: deepest.LayeredNetwork(
            [3, 8, 8, 8, 5, 4],
            [jnp.tanh, jax.nn.sigmoid, jax.nn.sigmoid, jax.nn.softplus, identity],
            key=k,
            bias_init="normal",
        ),
        cross_entropy,
        6,
    ),
    (
        "depth16",
        lambda k: deepest.LayeredNetwork(
            [4] + [9] * 15 + [3], [jnp.tanh] * 15 + [identity], key=k, bias_init="normal"
        ),
        mse,
        7,
    ),
    (
        "depth64-residual",
        lambda k: deepest.LayeredNetwork(
            [6] * 65, jnp.tanh, key=k, residual_step=1 / 64, bias_init="normal"
        ),
        mse,
        3,
    ),
    ("depth64-sigmoid", lambda k: deepest.LayeredNetwork([5] * 65, jax.nn.sigmoid, key=k), mse, 2),
    ("custom-layers", custom_layers, mse, 5),
]


def make_case(build, loss, n_samples, key):
    k_net, k_x, k_y = jr.split(key, 3)
    net = build(k_net)
    x = jr.normal(k_x, (n_samples, net.widths[0]))
    if loss is cross_entropy:
        y = jr.randint(k_y, (n_samples,), 0, net.widths[-1])
    else:
        y = jr.normal(k_y, (n_samples, net.widths[-1]))
    return net, x, y


def reference_grad(loss):
    return jax.jit(lambda net, x, y: jax.grad(lambda n: loss(jax.vmap(n)(x), y))(net))


def assert_leafwise_close(grad, expected, rtol):
    leaves = jax.tree.leaves(grad)
    expected_leaves = jax.tree.leaves(expected)
    assert jax.tree.structure(grad) == jax.tree.structure(expected)
    assert len(leaves) > 0
    for g, e in zip(leaves, expected_leaves, strict=True):
        # Normwise per leaf: float64 rounding of sums of O(depth·width) terms is ~1e-15.
        assert jnp.linalg.norm(g - e) <= rtol * jnp.linalg.norm(e), (g, e)


@pytest.mark.parametrize("name, build, loss, n_samples", NETWORKS, ids=[n[0] for n in NETWORKS])
def test_costate_grad_equals_jax_grad(name, build, loss, n_samples, getkey):
    net, x, y = make_case(build, loss, n_samples, getkey())
    grad = jax.jit(deepest.costate_grad(loss))(net, x, y)
    assert_leafwise_close(grad, reference_grad(loss)(net, x, y), 1e-12)


def test_costate_value_and_grad(getkey):
    net, x, y = make_case(NETWORKS[2][1], cross_entropy, 6, getkey())
    loss, grad = deepest.costate_value_and_grad(cross_entropy)(net, x, y)
    assert jnp.allclose(loss, cross_entropy(jax.vmap(net)(x), y), rtol=1e-14)
    assert_leafwise_close(grad, reference_grad(cross_entropy)(net, x, y), 1e-12)


def run_from(net, start, z):
    """The forward pass from state z at layer `start` to the output."""
    h = net.residual_step
    for i in range(start, net.depth):
        layer = net.layer(i)
        z = layer(z) if h is None else z + h * layer(z)
    return z


@pytest.mark.parametrize("index", [2, 4], ids=["depth5-mixed", "depth64-residual"])
def test_costates_are_state_gradients(index, getkey):
    # λ(l) = ∂C/∂x(l): the gradient of the output misfit with respect to a perturbation of
    # the state at layer l, the layers before it held fixed.
    _, build, _, _ = NETWORKS[index]
    net = build(getkey())
    x = jr.normal(getkey(), (net.widths[0],))
    target = jr.normal(getkey(), (net.widths[-1],))

    def misfit(y_hat):
        return 0.5 * jnp.sum((y_hat - target) ** 2) + jnp.sum(jnp.sin(y_hat))

    costates, grad = deepest.costate_sweep(net, x, jax.grad(misfit)(net(x)))
    states = net.states(x)
    assert len(costates) == len(states) == net.depth + 1
    for i in [0, 1, net.depth // 2, net.depth - 1, net.depth]:
        expected = jax.grad(lambda z, i=i: misfit(run_from(net, i, z)))(states[i])
        assert jnp.linalg.norm(costates[i] - expected) <= 1e-12 * jnp.linalg.norm(expected)
    # The per-sample sweep's weight gradient is the gradient of the per-sample misfit.
    assert_leafwise_close(grad, jax.grad(lambda n: misfit(n(x)))(net), 1e-12)


class SweepOnly(deepest.AbstractCostateNetwork):
    """A network with only the per-sample `costate_sweep`, as a continuous network has."""

    net: deepest.LayeredNetwork
    scale: float = eqx.field(static=True, default=1.0)

    def __call__(self, x):
        return self.net(x)

    def costate_sweep(self, x, dC_dy):
        costates, grad = self.net.costate_sweep(x, dC_dy)
        return costates, SweepOnly(jax.tree.map(lambda g: self.scale * g, grad), self.scale)


def test_costate_grad_generic_over_costate_sweep(getkey):
    net, x, y = make_case(NETWORKS[3][1], mse, 7, getkey())
    wrapped = SweepOnly(net)
    grad = jax.jit(deepest.costate_grad(mse))(wrapped, x, y)
    assert_leafwise_close(grad, reference_grad(mse)(wrapped, x, y), 1e-12)


def test_protocol_default_pullback_matches_layered_pullback(getkey):
    # The protocol's default `costate_pullback` (vmap of the per-sample sweep, gradient
    # summed over the batch) and the layered network's batched override give the same
    # costates and gradient.
    net, x, y = make_case(NETWORKS[2][1], mse, 6, getkey())
    ys, pullback = net.costate_pullback(x)
    ys_default, pullback_default = SweepOnly(net).costate_pullback(x)
    assert jnp.array_equal(ys, ys_default)
    cotangent = jax.grad(mse)(ys, y)
    costates, grad = pullback(cotangent)
    costates_default, grad_default = pullback_default(cotangent)
    for a, b in zip(costates, costates_default, strict=True):
        assert jnp.allclose(a, b, rtol=1e-13, atol=1e-15)
    assert_leafwise_close(grad_default.net, grad, 1e-13)


def test_weights_round_trip(getkey):
    # `with_weights(weights())` is the network; new weights land where `weights()` read them.
    for net in (NETWORKS[2][1](getkey()), deepest.RecurrentNetwork(2, 3, 1, key=getkey())):
        assert isinstance(net, deepest.AbstractCostateNetwork)
        weights = net.weights()
        assert all(jnp.issubdtype(w.dtype, jnp.inexact) for w in weights)
        same = net.with_weights(weights)
        assert jax.tree.structure(same) == jax.tree.structure(net)
        doubled = net.with_weights([2 * w for w in weights])
        for w, w2 in zip(weights, doubled.weights(), strict=True):
            assert jnp.array_equal(2 * w, w2)


def test_costate_grad_continuous_network(getkey):
    # Any network with the per-sample `costate_sweep` works unchanged: here the continuous
    # network's partner sweep, against JAX's autodiff through the same RK4 steps.
    field = eqx.nn.MLP(2, 2, 6, 1, activation=jnp.tanh, key=getkey())
    decoder = eqx.nn.Linear(2, 1, key=getkey())
    net = deepest.ContinuousNetwork(field, t1=1.0, n_steps=8, decoder=decoder)
    reference = deepest.ContinuousNetwork(
        field, t1=1.0, n_steps=8, decoder=decoder, adjoint="autodiff"
    )
    x = jr.normal(getkey(), (5, 2))
    y = jr.normal(getkey(), (5, 1))
    # The MLP holds its activation as a leaf: eqx.filter_jit, not jax.jit.
    grad = eqx.filter_jit(deepest.costate_grad(mse))(net, x, y)
    expected = eqx.filter_grad(lambda n: mse(jax.vmap(n)(x), y))(reference)
    # The two networks differ in their static `adjoint` only: compare the gradient arrays.
    assert_leafwise_close(jax.tree.leaves(grad), jax.tree.leaves(expected), 1e-12)


# -- recurrent networks: backpropagation through time -----------------------------------------


class GatedCell(eqx.Module):
    """A user-defined gated cell (h, u) -> h' built from `eqx.nn.Linear` layers."""

    candidate: eqx.nn.Linear
    gate: eqx.nn.Linear

    def __call__(self, h, u):
        hu = jnp.concatenate([h, u])
        z = jax.nn.sigmoid(self.gate(hu))
        return z * h + (1 - z) * jnp.tanh(self.candidate(hu))


def dense_rnn(key):
    return deepest.RecurrentNetwork(2, 6, 3, key=key)


def gated_rnn(key):
    k1, k2, k3 = jr.split(key, 3)
    return deepest.RecurrentNetwork(
        cell=GatedCell(eqx.nn.Linear(7, 5, key=k1), eqx.nn.Linear(7, 5, key=k2)),
        readout=eqx.nn.Linear(5, 3, key=k3),
        initial_state=0.1 * jnp.arange(5.0),
    )


def unrolled(rnn, us):
    """The recurrent network unrolled by a Python loop (no scan): the reference."""
    h, ys = rnn.initial_state, []
    for u in us:
        h = rnn.cell(h, u)
        ys.append(rnn.readout(h))
    return jnp.stack(ys)


@pytest.mark.parametrize("build", [dense_rnn, gated_rnn], ids=["elman", "gated"])
def test_recurrent_costate_grad_equals_unrolled_grad(build, getkey):
    rnn = build(getkey())
    us = jr.normal(getkey(), (4, 9, 2))
    ys = jr.normal(getkey(), (4, 9, 3))
    # Measurements along the sequence, weighted unevenly in time.
    weights = jnp.linspace(0.5, 2.0, 9)[None, :, None]

    def loss(y_hat, y):
        return jnp.mean(weights * (y_hat - y) ** 2)

    grad = jax.jit(deepest.costate_grad(loss))(rnn, us, ys)
    expected = jax.grad(lambda n: loss(jnp.stack([unrolled(n, u) for u in us]), ys))(rnn)
    assert_leafwise_close(grad, expected, 1e-12)
    assert jnp.allclose(jax.vmap(rnn)(us), jnp.stack([unrolled(rnn, u) for u in us]), rtol=1e-13)


def test_recurrent_costates_are_state_gradients(getkey):
    rnn = dense_rnn(getkey())
    us = jr.normal(getkey(), (7, 2))
    ys = jr.normal(getkey(), (7, 3))

    def loss(y_hat):
        return jnp.sum((y_hat - ys) ** 2)

    costates, _ = deepest.costate_sweep(rnn, us, jax.grad(loss)(rnn(us)))
    states = rnn.states(us)
    assert costates.shape == states.shape == (8, 6)
    for t in range(8):
        # C as a function of h(t): y(0..t−2) are fixed, y(t−1) = g(h(t)) is measured at
        # h(t) itself (the costate's jump), and the outputs after follow from h(t).
        def from_t(h, t=t):
            outputs = list(rnn(us)[: max(t - 1, 0)])
            if t >= 1:
                outputs.append(rnn.readout(h))
            for u in us[t:]:
                h = rnn.cell(h, u)
                outputs.append(rnn.readout(h))
            return loss(jnp.stack(outputs))

        expected = jax.grad(from_t)(states[t])
        assert jnp.linalg.norm(costates[t] - expected) <= 1e-12 * jnp.linalg.norm(expected)


# -- costate_vjp --------------------------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True])
def test_costate_vjp_grad_equals_jax_grad(batched, getkey):
    net, x, y = make_case(NETWORKS[2][1], cross_entropy, 6, getkey())
    model = deepest.costate_vjp(net, batched=batched)

    def loss(m):
        return cross_entropy(m(x) if batched else jax.vmap(m)(x), y)

    assert jnp.allclose(loss(model), cross_entropy(jax.vmap(net)(x), y), rtol=1e-14)
    grad = jax.jit(jax.grad(loss))(model)
    assert isinstance(grad, deepest.CostateVJP)
    assert_leafwise_close(grad.network, reference_grad(cross_entropy)(net, x, y), 1e-12)


def test_costate_vjp_uses_the_sweep(getkey):
    # A sweep that doubles its gradient: jax.grad through the wrapper must see the doubling.
    net, x, y = make_case(NETWORKS[1][1], mse, 4, getkey())
    model = deepest.costate_vjp(SweepOnly(net, scale=2.0))
    grad = jax.grad(lambda m: mse(jax.vmap(m)(x), y))(model).network.net
    expected = jax.tree.map(lambda g: 2 * g, reference_grad(mse)(net, x, y))
    assert_leafwise_close(grad, expected, 1e-12)


# -- the envelope theorem: ∇_W A at the state minimiser → ∇_W C as R_f → ∞ -----------------


def test_envelope_action_gradient_tends_to_costate_gradient(getkey):
    """Issue 3's ML action, minimised over the states for fixed weights.

    A(X, W) = a Σ_k (|x_k(0) − u_k|² + |x_k(L) − v_k|²) + b Σ_k Σ_l |x_k(l+1) − f_l(x_k(l))|²
    with a = R_m/(M (N_0 + N_L)), b = R_f/(M Σ_{l≥1} N_l). At the minimiser X*, with
    μ(l+1) = 2b (x(l+1) − f_l(x(l))), stationarity gives μ(L) = −2a (x(L) − v) and
    μ(l) = (∂f_l/∂x)ᵀ μ(l+1), and ∇_W A = −Σ (∂f_l/∂W)ᵀ μ(l+1). As R_f → ∞ the model holds,
    −μ → λ, the backprop costate of C = a Σ_k |F(x*_k(0)) − v_k|² (the output misfit with the
    same weight a), so ∇_W A → ∇_W C with constant 1; the difference is O(1/R_f) and the model
    error Σ|x(l+1) − f_l(x(l))|² = Σ|μ|²/(4b²) is O(1/R_f²).
    """
    widths = [3, 4, 4, 2]
    net = deepest.LayeredNetwork(widths, jnp.tanh, key=getkey(), bias_init="normal")
    n_pairs, rm = 3, 1.0
    u = jr.normal(getkey(), (n_pairs, widths[0]))
    v = jax.vmap(net)(u) + 0.3 * jr.normal(getkey(), (n_pairs, widths[-1]))
    a = rm / (n_pairs * (widths[0] + widths[-1]))

    def model_error(states, net):
        return sum(
            jnp.sum((states[i + 1] - jax.vmap(net.layer(i))(states[i])) ** 2)
            for i in range(net.depth)
        )

    def action(states, net, rf):
        b = rf / (n_pairs * sum(widths[1:]))
        measurement = jnp.sum((states[0] - u) ** 2) + jnp.sum((states[-1] - v) ** 2)
        return a * measurement + b * model_error(states, net)

    forward = [jnp.stack(s) for s in zip(*[net.states(uk) for uk in u], strict=True)]
    flat0, unravel = ravel_pytree(forward)
    costate_grad = jax.jit(deepest.costate_grad(lambda y_hat, y: a * jnp.sum((y_hat - y) ** 2)))

    @jax.jit
    def solve(rf):
        def stationarity(flat, _):
            # ∇_X A / (1 + R_f): O(1) at every R_f, so Newton's absolute tolerance on it
            # means the same at every R_f.
            return jax.grad(lambda f: action(unravel(f), net, rf))(flat) / (1 + rf)

        # Newton on the stationarity condition (a small dense system), to rounding level.
        solver = optx.Newton(rtol=1e-13, atol=1e-13)
        sol = optx.root_find(stationarity, solver, flat0, max_steps=50)
        states = unravel(sol.value)
        grad_a = ravel_pytree(jax.grad(lambda n: action(states, n, rf))(net))[0]
        grad_c = ravel_pytree(costate_grad(net, states[0], v))[0]
        residual = jnp.linalg.norm(stationarity(sol.value, None))
        return grad_a, grad_c, model_error(states, net), residual

    rfs = 10.0 ** np.arange(1, 6)
    differences, model_errors = [], []
    for rf in rfs:
        grad_a, grad_c, error, residual = solve(rf)
        assert residual < 1e-14
        differences.append(float(jnp.linalg.norm(grad_a - grad_c) / jnp.linalg.norm(grad_c)))
        model_errors.append(float(error))
    slope_difference = np.polyfit(np.log(rfs), np.log(differences), 1)[0]
    slope_model = np.polyfit(np.log(rfs), np.log(model_errors), 1)[0]
    assert abs(slope_difference + 1) <= 0.2, (differences, slope_difference)
    assert slope_model <= -1.8, (model_errors, slope_model)
    assert differences[-1] < 1e-3


# -- bad input ------------------------------------------------------------------------------


def test_bad_input(getkey):
    net = deepest.LayeredNetwork([3, 5, 2], key=getkey())
    grad = deepest.costate_grad(mse)
    x, y = jnp.ones((4, 3)), jnp.ones((4, 2))
    with pytest.raises(ValueError, match="width N_0 = 3"):
        grad(net, jnp.ones((4, 5)), y)
    with pytest.raises(ValueError, match="empty"):
        grad(net, jnp.ones((0, 3)), jnp.ones((0, 2)))
    with pytest.raises(ValueError, match="targets"):
        grad(net, x, jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="one target per input"):
        grad(net, x, jnp.ones((5, 2)))
    # concrete data: checked on the host before any compute
    with pytest.raises(ValueError, match="NaN or infinite"):
        grad(net, x.at[1, 2].set(jnp.nan), y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        grad(net, x, y.at[0, 0].set(jnp.inf))
    # inside jit: checked at run time only when asked for
    checked = eqx.filter_jit(deepest.costate_grad(mse, check_finite=True))
    with pytest.raises(eqx.EquinoxRuntimeError, match="NaN or infinite"):
        checked(net, x.at[1, 2].set(jnp.nan), y)
    unchecked = eqx.filter_jit(grad)(net, x.at[1, 2].set(jnp.nan), y)
    assert not all(jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(unchecked))
    with pytest.raises(TypeError, match="costate_sweep"):
        deepest.costate_sweep(eqx.nn.Linear(3, 2, key=getkey()), x[0], y[0])
    with pytest.raises(TypeError, match="costate_sweep"):
        grad(eqx.nn.Linear(3, 2, key=getkey()), x, y)
    with pytest.raises(TypeError, match="costate_sweep"):
        deepest.costate_vjp(eqx.nn.Linear(3, 2, key=getkey()))
    with pytest.raises(TypeError, match="output_loss"):
        deepest.costate_grad("mse")
