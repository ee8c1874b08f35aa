import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import deepest


def _identity(z):
    return z


def test_action_hand_computed():
    # One layer x(1) = 2 x(0), M = 1, u = 1, v = 3; states x(0) = 1.5, x(1) = 2.5:
    # measurement 2/(1·(1+1))·(0.5² + 0.5²) = 0.5, model (2.5 − 3)²/(1·1) = 0.25.
    net = deepest.LayeredNetwork([1, 1], _identity, key=jr.key(0), use_bias=False)
    net = eqx.tree_at(lambda n: n.layers[0].weight, net, jnp.array([[2.0]]))
    problem = deepest.training(net, [[1.0]], [[3.0]], rm=2.0)
    u = {
        "states": {"x000": jnp.array([[1.5]]), "x001": jnp.array([[2.5]])},
        "weights": {"w000": jnp.array([[2.0]])},
    }
    assert float(problem.measurement_error(u)) == pytest.approx(0.5, rel=1e-15)
    assert float(problem.model_error(u)) == pytest.approx(0.25, rel=1e-15)
    assert float(problem.action(u, 4.0)) == pytest.approx(1.5, rel=1e-15)


@pytest.mark.parametrize("residual", [False, True])
def test_action_against_numpy(residual):
    # Mixed widths (3, 4, 4, 4, 2) with a stacked run of equal layers, rm a pair, M = 3:
    # the action written out in numpy, loop by loop.
    widths = [4] * 5 if residual else [3, 4, 4, 4, 2]
    h = 0.25 if residual else None
    acts = [jnp.tanh, jnp.tanh, jnp.tanh, _identity]
    net = deepest.LayeredNetwork(
        widths, jnp.tanh if residual else acts, key=jr.key(1), residual_step=h, bias_init="normal"
    )
    k1, k2, k3 = jr.split(jr.key(2), 3)
    x = jr.normal(k1, (3, widths[0]))
    y = jr.normal(k2, (3, widths[-1]))
    rm = np.array([3.0, 0.5])
    problem = deepest.training(net, x, y, rm=rm, state_noise=0.3, weight_init="network")
    u = problem.init(k3)
    states = [np.asarray(u["states"][f"x{j:03d}"]) for j in range(len(widths))]
    meas = rm[0] * np.sum((states[0] - np.asarray(x)) ** 2) + rm[1] * np.sum(
        (states[-1] - np.asarray(y)) ** 2
    )
    model = 0.0
    for j in range(len(widths) - 1):
        layer = net.layer(j)
        w, b = np.asarray(layer.weight), np.asarray(layer.bias)
        z = states[j] @ w.T + b
        f = np.tanh(z) if (residual or j < 3) else z
        pred = states[j] + h * f if residual else f
        model += np.sum((states[j + 1] - pred) ** 2)
    assert float(problem.measurement_error(u)) == pytest.approx(
        meas / (3 * (widths[0] + widths[-1])), rel=1e-13
    )
    assert float(problem.model_error(u)) == pytest.approx(model / (3 * sum(widths[1:])), rel=1e-13)
    rebuilt = problem.to_model(u)
    assert all(
        bool(jnp.all(a == b))
        for a, b in zip(
            jax.tree_util.tree_leaves(rebuilt), jax.tree_util.tree_leaves(net), strict=False
        )
    )


def test_gradient_finite_differences():
    net = deepest.LayeredNetwork([3, 5, 5, 2], jnp.tanh, key=jr.key(3))
    x = jr.normal(jr.key(4), (4, 3))
    y = jr.normal(jr.key(5), (4, 2))
    problem = deepest.training(net, x, y, rm=7.0)
    flat, unravel = ravel_pytree(problem.init(jr.key(6)))
    rf = 30.0
    fn = jax.jit(lambda v: problem.action(unravel(v), rf))
    grad = jax.grad(fn)(flat)
    direction = jr.normal(jr.key(7), flat.shape)
    eps = 1e-5
    fd = (fn(flat + eps * direction) - fn(flat - eps * direction)) / (2 * eps)
    # Central differences: error ~ eps² f''' ≈ 1e-10 against a derivative of size ~10.
    assert float(grad @ direction) == pytest.approx(float(fd), rel=1e-8)


@pytest.fixture(scope="module")
def twin_result():
    generator = deepest.twin_generator(jr.key(0), "tanh", width=4, n_layers=6)
    x, y = deepest.noisy_pairs(generator, 8, jr.key(1), noise=0.01)
    val = deepest.noisy_pairs(generator, 50, jr.key(2), noise=0.01)
    net = deepest.LayeredNetwork([4] * 6, jnp.tanh, key=jr.key(3), use_bias=False)
    problem = deepest.training(net, x, y, rm=1 / 0.01**2, validation=val, noise=0.01)
    schedule = deepest.AnnealSchedule(1e-2, 4.0, 16)
    result = deepest.anneal(problem, schedule, 4, jr.key(4), progress=False, max_evaluations=3000)
    return problem, result


def test_anneal_reaches_low_training_error(twin_result):
    problem, result = twin_result
    best = result.best
    initial = jax.jit(lambda k: problem.views(jax.vmap(problem.init)(jr.split(k, 4))))(jr.key(4))[
        "train_error"
    ]
    # 64 noisy target values against 80 weights: the annealed network fits the training
    # pairs below the noise floor σ² = 1e-4; the initial networks are ~100x worse.
    assert result.train_error[best] < 1e-4
    assert np.min(initial) > 30 * result.train_error[best]
    assert result.validation_error.shape == (4,)
    assert result.expected_action == pytest.approx(1.0)


def test_model_reproduces_output_layer(twin_result):
    problem, result = twin_result
    for i in range(result.n_paths):
        states = result.path_unknowns(i)["states"]
        model = result.model(i)
        out = jax.vmap(model)(jnp.asarray(states["x000"]))
        # Each layer's residual r_l reaches the output through the later layers, each
        # Lipschitz with constant ≤ ‖W‖₂ (|tanh'| ≤ 1): |Δx(L)| ≤ Σ_l |r_l| Π ‖W‖₂ ≤
        # √(L·Σ|r|²)·Π max(1, ‖W‖₂), and Σ|r|² = e·M·Σ N_l = 160 e for model error e.
        weights = np.asarray(model.layers[0].weight)
        gain = np.prod([max(1.0, np.linalg.norm(w, 2)) for w in weights])
        bound = np.sqrt(5 * 160 * result.model_error[-1, i]) * gain
        assert np.max(np.abs(out - states["x005"])) <= bound
    assert result.model_error[-1, result.best] < 1e-10


def test_recurrent_training():
    rnn = deepest.RecurrentNetwork(2, 3, 1, key=jr.key(0))
    us = jr.normal(jr.key(1), (4, 6, 2))
    ys = jax.vmap(rnn)(us) + 0.1
    problem = deepest.training(rnn, us, ys, rm=5.0, weight_init="network", state_noise=0.0)
    u = problem.init(jr.key(2))
    # States from the forward pass: the model holds (to rounding: the forward pass of
    # `init` and of the residuals are two programs, which may round differently), and the
    # measurement term is R_m times the mean squared readout misfit (0.1²).
    assert float(problem.model_error(u)) <= 1e-28
    assert float(problem.measurement_error(u)) == pytest.approx(5.0 * 0.01, rel=1e-12)
    hs = u["states"] + 0.2
    u = {**u, "states": hs}
    h_prev = jnp.concatenate([jnp.zeros((4, 1, 3)), hs[:, :-1]], axis=1)
    pred = jax.vmap(jax.vmap(rnn.cell))(h_prev, us)
    assert float(problem.model_error(u)) == pytest.approx(
        float(jnp.mean((hs - pred) ** 2)), rel=1e-13
    )
    result = deepest.anneal(
        problem,
        deepest.AnnealSchedule(1.0, 10.0, 4),
        2,
        jr.key(3),
        progress=False,
        max_evaluations=2000,
    )
    best = result.best
    assert result.model_error[-1, best] < 1e-6
    # ys are reachable (a shifted readout bias fits them exactly).
    assert result.train_error[best] < 1e-4


def test_problem_follows_the_network():
    # A network wrapped by `costate_vjp` is trained as the network itself; a recurrent
    # network's action takes one R_m (its only measurement is the readout).
    net = deepest.LayeredNetwork([3, 4, 2], jnp.tanh, key=jr.key(0))
    x, y = jr.normal(jr.key(1), (5, 3)), jr.normal(jr.key(2), (5, 2))
    plain = deepest.training(net, x, y, rm=2.0)
    wrapped = deepest.training(deepest.costate_vjp(net), x, y, rm=2.0)
    u = plain.init(jr.key(3))
    assert float(wrapped.action(u, 3.0)) == float(plain.action(u, 3.0))
    rnn = deepest.RecurrentNetwork(2, 3, 1, key=jr.key(4))
    us = jr.normal(jr.key(5), (4, 6, 2))
    with pytest.raises(ValueError, match="scalar for a recurrent network"):
        deepest.training(rnn, us, jax.vmap(rnn)(us), rm=[1.0, 2.0])


def test_classification_views():
    images, labels = deepest.bar_images(12, jr.key(0))
    net = deepest.LayeredNetwork([25, 6, 4], jax.nn.sigmoid, key=jr.key(1))
    problem = deepest.training(net, images, labels, rm=1.0)
    assert problem.classification
    views = jax.jit(lambda k: problem.views(jax.vmap(problem.init)(jr.split(k, 3))))(jr.key(2))
    out = jax.vmap(net)(images)
    assert set(views) == {"train_error", "train_accuracy"}
    assert views["train_accuracy"].shape == (3,)
    assert np.all((views["train_accuracy"] >= 0) & (views["train_accuracy"] <= 1))
    assert problem.errors(net, images, labels)["accuracy"] == pytest.approx(
        float(np.mean(np.argmax(out, 1) == np.argmax(labels, 1)))
    )


class _Field(eqx.Module):
    matrix: jax.Array
    bias: jax.Array

    def __call__(self, x):
        return jnp.tanh(self.matrix @ x + self.bias)


def test_rf_scaling_matches_continuous_action():
    # A smooth path x(t) that does not solve ẋ = F(x): with R_f^disc = R_f^cont·D·T/(2h²)
    # the discrete model term R_f^disc·model_error tends to (R_f^cont/2)∫|ẋ − F|² dt as the
    # depth L = T/h grows, with the O(h) error of the left Riemann sum of forward-Euler
    # residuals r = h(ẋ − F) + O(h²).
    field = _Field(jnp.array([[0.5, -1.0], [1.0, 0.3]]), jnp.array([0.1, -0.2]))
    T, rf_cont, D = 2.0, 3.0, 2

    def path(t):
        return jnp.stack([jnp.sin(t), 0.5 * jnp.cos(2 * t)], axis=-1)

    n = 20000  # trapezoid rule, error ~1e-8 relative
    ts = jnp.linspace(0.0, T, n + 1)
    integrand = jnp.sum((jax.vmap(jax.jacfwd(path))(ts) - jax.vmap(field)(path(ts))) ** 2, 1)
    continuous = rf_cont / 2 * float(jnp.sum(integrand[1:] + integrand[:-1]) / 2 * (T / n))
    errors = []
    for L in (5, 10, 20, 40, 80, 160):
        h = T / L
        net = deepest.LayeredNetwork(layers=[field] * L, residual_step=h)
        xs = path(jnp.linspace(0.0, T, L + 1))
        problem = deepest.training(net, xs[:1], xs[-1:], rm=1.0)
        weights = jax.tree_util.tree_leaves(eqx.filter(net, eqx.is_inexact_array))
        u = {
            "weights": {f"w{i:03d}": w for i, w in enumerate(weights)},
            "states": {f"x{j:03d}": xs[j][None] for j in range(L + 1)},
        }
        discrete = rf_cont * D * T / (2 * h**2) * float(problem.model_error(u))
        errors.append(abs(discrete - continuous) / continuous)
    assert max(errors) < 0.02  # without the L² scaling the term would change 1024-fold
    ratios = np.array(errors[3:]) / np.array(errors[2:-1])
    assert np.all((ratios > 0.4) & (ratios < 0.7))  # first order in h once asymptotic


def _bad(**kw):
    net = deepest.LayeredNetwork([3, 4, 2], jnp.tanh, key=jr.key(0))
    args = {"net": net, "inputs": np.ones((5, 3)), "targets": np.ones((5, 2)), "rm": 1.0}
    args.update(kw)
    return lambda: deepest.training(**args)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"inputs": np.ones((5, 4))}, "width 4"),
        ({"inputs": np.ones((0, 3)), "targets": np.ones((0, 2))}, "M = 0"),
        ({"targets": np.ones((5, 3))}, "N_L = 2"),
        ({"targets": np.ones((4, 2))}, "one target per input"),
        ({"inputs": np.full((5, 3), np.nan)}, "NaN or infinite"),
        ({"targets": np.full((5, 2), np.inf)}, "NaN or infinite"),
        ({"rm": 0.0}, "positive"),
        ({"rm": [1.0, 2.0, 3.0]}, "pair"),
        ({"validation": (np.ones((2, 3)), np.ones((2, 5)))}, "validation targets"),
        ({"weight_init": "zeros"}, "weight_init"),
        ({"inputs": np.ones(5)}, "shape"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _bad(**kwargs)()


def test_bad_network_and_rf():
    with pytest.raises(TypeError, match="LayeredNetwork"):
        deepest.training(lambda x: x, np.ones((2, 3)), np.ones((2, 3)), rm=1.0)
    problem = _bad()()
    with pytest.raises(ValueError, match="scalar"):
        deepest.anneal(problem, deepest.AnnealSchedule([1.0, 2.0], 2.0, 2), 2, jr.key(0))
