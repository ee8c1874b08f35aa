import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate

import deepest

NOISE = 0.005


def _spread(generator, key):
    """Standard deviation of the generator's output across 500 inputs, mean over outputs."""
    inputs = deepest.standardised_inputs(500, 10, key)
    return float(jnp.mean(jnp.std(jax.vmap(generator)(inputs), axis=0)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tanh_twin_generator_output_varies(seed):
    generator = deepest.twin_generator(jr.key(seed), "tanh")
    assert generator.depth == 99 and generator.widths == (10,) * 100
    assert _spread(generator, jr.key(10 + seed)) >= 20 * NOISE


def test_authors_twin_generator_output_is_nearly_constant():
    # The paper's generator (sigmoid, weights U(±0.1)) maps every input to nearly the same
    # output: the spread is far below the noise σ = 0.005 (rounding level, ~1e-16).
    generator = deepest.twin_generator(jr.key(0), "authors")
    weights = np.asarray(generator.layers[0].weight)
    assert np.all(np.abs(weights) <= 0.1) and np.max(np.abs(weights)) > 0.09
    assert _spread(generator, jr.key(1)) < 1e-10
    # With gain 1 (weights N(0, 1/N)) the tanh signal also fades over 100 layers.
    faded = deepest.twin_generator(jr.key(0), "tanh", gain=1.0)
    assert _spread(faded, jr.key(1)) < 20 * NOISE


def test_noisy_pairs_statistics():
    generator = deepest.twin_generator(jr.key(0), "tanh", n_layers=5)
    clean = deepest.standardised_inputs(4000, 10, jr.key(1))
    np.testing.assert_allclose(clean.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(clean.std(axis=1), 1, rtol=1e-12)
    inputs, targets = deepest.noisy_pairs(generator, 4000, jr.key(2), noise=NOISE, inputs=clean)
    # 40000 noise samples: the sample standard deviation is within ~1% of σ.
    for residual in (inputs - clean, targets - jax.vmap(generator)(clean)):
        assert float(jnp.std(residual)) == pytest.approx(NOISE, rel=0.03)
        assert abs(float(jnp.mean(residual))) < 3 * NOISE / np.sqrt(40000)


@pytest.mark.parametrize("positions", ["centered", "all"])
def test_bar_images(positions):
    images, labels = deepest.bar_images(400, jr.key(0), positions=positions)
    assert images.shape == (400, 25) and labels.shape == (400, 4)
    np.testing.assert_array_equal(labels.sum(axis=0), [100] * 4)
    np.testing.assert_array_equal(labels.sum(axis=1), 1)
    clean = np.round(np.asarray(images)).reshape(-1, 5, 5)
    # Pixel noise is uniform in [−0.175, 0.175]: rounding recovers the bar exactly.
    assert np.max(np.abs(np.asarray(images).reshape(-1, 5, 5) - clean)) <= 0.175
    templates = deepest.bar_images.templates(5, positions)
    for image, label in zip(clean, np.argmax(labels, axis=1), strict=False):
        assert any(np.array_equal(image, t) for t in templates[label])
    rows = clean[np.argmax(labels, 1) == deepest.bar_images.classes.index("horizontal")]
    assert np.all(np.sort(rows.sum(axis=2), axis=1)[:, -1] == 5)  # one full row
    if positions == "all":
        # More than one bar position per class occurs.
        assert len({image.tobytes() for image in clean}) > 8


def test_flow_map_against_scipy():
    flow = deepest.FlowMap(3, jr.key(0), horizon=1.5)
    x0 = np.array([0.3, -0.7, 0.2])
    sol = scipy.integrate.solve_ivp(
        lambda t, x: np.asarray(flow.field(jnp.asarray(x))),
        (0.0, 1.5),
        x0,
        method="DOP853",
        rtol=1e-12,
        atol=1e-12,
    )
    np.testing.assert_allclose(np.asarray(flow(x0)), sol.y[:, -1], rtol=0, atol=1e-8)


def test_bad_input():
    with pytest.raises(ValueError, match="variant"):
        deepest.twin_generator(jr.key(0), "relu")
    with pytest.raises(ValueError, match="n_layers"):
        deepest.twin_generator(jr.key(0), n_layers=1)
    with pytest.raises(ValueError, match="odd"):
        deepest.bar_images(4, jr.key(0), size=4)
    with pytest.raises(ValueError, match="positions"):
        deepest.bar_images(4, jr.key(0), positions="corner")
    with pytest.raises(ValueError, match="n_pairs"):
        deepest.noisy_pairs(lambda x: x, 0, jr.key(0), noise=0.1, width=2)
    with pytest.raises(ValueError, match="noise"):
        deepest.noisy_pairs(lambda x: x, 3, jr.key(0), noise=-1.0, width=2)
    with pytest.raises(ValueError, match="horizon"):
        deepest.FlowMap(2, jr.key(0), horizon=0.0)
