import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest


def test_twin_experiment_noise_and_truth():
    data = deepest.twin_experiment(
        deepest.models.Lorenz96(8.17), 20, 161, 0.025, [0, 5, 10, 15], 0.4, jr.key(0)
    )
    assert data.values.shape == (161, 4) and data.truth.shape == (161, 20)
    noise = np.asarray(data.values) - np.asarray(data.truth)[:, [0, 5, 10, 15]]
    # 644 draws of N(0, 0.4²): the sample std is within a few percent of 0.4
    assert abs(noise.std() / 0.4 - 1) < 0.1
    # on the attractor: the Lorenz-96 mean state is O(F/4), its spread O(F/2)
    assert 1.0 < np.asarray(data.truth).mean() < 4.0
    assert float(data.true_params["forcing"]) == 8.17
    # the truth follows the model: integrating from its first state reproduces it
    again = deepest.integrate(deepest.models.Lorenz96(8.17), data.truth[0], data.times, substeps=10)
    np.testing.assert_allclose(again, data.truth, rtol=0, atol=1e-10)


def test_lorenz63_model():
    x = jnp.array([1.0, 2.0, 3.0])
    f = deepest.models.Lorenz63()(0.0, x)
    np.testing.assert_allclose(f, [10 * (2 - 1), 1 * (28 - 3) - 2, 1 * 2 - 8 / 3 * 3])


def test_lorenz96_model():
    x = jnp.arange(5.0)
    f = deepest.models.Lorenz96(8.0)(0.0, x)
    # dx_i = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F, indices mod 5
    expected = [(x[(i + 1) % 5] - x[(i - 2) % 5]) * x[(i - 1) % 5] - x[i] + 8 for i in range(5)]
    np.testing.assert_allclose(f, expected)
    with pytest.raises(ValueError, match="at least 4"):
        deepest.models.Lorenz96().check_dim(3)


def test_npz_and_csv_round_trip(tmp_path):
    data = deepest.twin_experiment(
        deepest.models.Lorenz96(8.17), 6, 11, 0.05, [0, 3], 0.4, jr.key(1)
    )
    data.save(tmp_path / "d.npz")
    back = deepest.Observations.load(tmp_path / "d.npz")
    np.testing.assert_array_equal(back.values, data.values)
    np.testing.assert_array_equal(back.truth, data.truth)
    assert back.observed == (0, 3)
    assert float(back.true_params["forcing"]) == 8.17
    mask = np.ones((11, 2), bool)
    mask[4, 1] = False
    masked = deepest.Observations(data.times, data.values, [0, 3], mask=mask)
    masked.save(tmp_path / "d.csv")
    back = deepest.Observations.load(tmp_path / "d.csv")
    assert back.observed == (0, 3)
    np.testing.assert_array_equal(back.mask, mask)
    np.testing.assert_allclose(back.values[mask], np.asarray(data.values)[mask], rtol=1e-15)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"observed": [0, 0]}, "distinct"),
        ({"observed": [0, -1]}, "non-negative"),
        ({"values": np.zeros((4, 2))}, "shape"),
        ({"values": np.zeros((5, 3))}, "shape"),
        ({"values": np.array([[0.0, np.nan]] + [[0.0, 0.0]] * 4)}, "NaN or inf"),
        ({"values": np.array([[0.0, np.inf]] + [[0.0, 0.0]] * 4)}, "NaN or inf"),
        ({"times": [0.0, 0.2, 0.1, 0.3, 0.4]}, "increasing"),
        ({"truth": np.zeros((5, 1))}, "out of range"),
        ({"mask": np.zeros((5, 2), bool)}, "hides every"),
    ],
)
def test_bad_observations(kwargs, match):
    args = {"times": np.linspace(0, 1, 5), "values": np.zeros((5, 2)), "observed": [0, 1], **kwargs}
    with pytest.raises(ValueError, match=match):
        deepest.Observations(**args)


def test_observed_index_out_of_range_for_model():
    data = deepest.Observations(np.linspace(0, 1, 5), np.zeros((5, 2)), [0, 7])
    with pytest.raises(ValueError, match="out of range"):
        deepest.Assimilation(deepest.models.Lorenz96(), data, rm=1.0, dim=6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_physical_time_grids_are_equally_spaced(dtype):
    # issue 23: arange(n)·dt and linspace of a 100 ms window at dt = 0.02 ms were refused
    # (steps off by 5e-13); their steps differ by < ε·max|t|, the check allows 64·ε·max|t|.
    from deepest._data import check_equal_spacing

    for times in (
        np.arange(5001, dtype=dtype) * dtype(0.02),
        np.linspace(0, 100, 5001, dtype=dtype),
    ):
        check_equal_spacing(times, "times")
        data = deepest.Observations(times, np.zeros((5001, 1), dtype), [0])
        deepest.Assimilation(deepest.models.Lorenz63(), data, 1.0, dim=3)
    # one step off by 1e-6 of the span is not rounding: refused, naming it and by how much
    uneven = np.arange(5001, dtype=np.float64) * 0.02
    uneven[2500:] += 1e-4
    with pytest.raises(ValueError, match=r"times\[2500\] − times\[2499\] = 0.02009.* by 0.0001,"):
        check_equal_spacing(uneven, "times")
