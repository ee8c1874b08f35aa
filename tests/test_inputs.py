"""Driving inputs: `deepest.Inputs` gives the samples themselves at grid times (even when the
time carries rounding), reproduces linear (linear interpolation) and quadratic (cubic)
signals exactly, converges at its order, is continuous (and C¹ when cubic), works under
jit, vmap and grad, refuses bad samples before compute, and loads from files."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deepest

INTERPOLATIONS = ("linear", "cubic")


@jax.jit
def _evaluate(inputs, ts):
    return jax.vmap(inputs)(ts)


def _at(inputs, ts):
    return np.asarray(_evaluate(inputs, jnp.asarray(ts)))


@jax.jit
def _derivatives(inputs, ts):
    return jax.vmap(jax.jacfwd(inputs))(ts)


def _slopes(inputs, ts):
    return np.asarray(_derivatives(inputs, jnp.asarray(ts)))


def _non_uniform(n, t0=0.0, t1=2.0, seed=0):
    gaps = np.random.default_rng(seed).uniform(0.5, 1.5, n - 1)
    return t0 + (t1 - t0) * np.concatenate([[0.0], np.cumsum(gaps) / gaps.sum()])


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_samples_at_grid_times_bit_for_bit(interpolation):
    grid = np.linspace(0.0, 1.0, 21)
    samples = np.random.default_rng(0).normal(size=(21, 2))
    inputs = deepest.Inputs(grid, samples, interpolation=interpolation)
    # the grid itself, and each time off by about an ulp either way
    for t in (grid, grid * (1 + 1e-15), grid * (1 - 1e-15) - 1e-17):
        assert np.array_equal(_at(inputs, t), samples)
    # a model grid t0 + kΔ with twice the step (the nodes), and its midpoints (as
    # Simpson–Hermite evaluates them): all of them on the inputs' grid
    k = np.arange(11)
    assert np.array_equal(_at(inputs, 0.0 + k * 0.1), samples[::2])
    assert np.array_equal(_at(inputs, (k[:-1] + 0.5) * 0.1), samples[1::2])
    # away from the grid times (beyond the rounding tolerance) the values move
    assert not np.any(_at(inputs, grid[1:-1] + 1e-9) == samples[1:-1])


def test_linear_reproduces_linear_signals():
    grid = _non_uniform(9)
    signals = np.stack([0.7 - 0.9 * grid, 3.0 + 2.0 * grid], axis=1)
    inputs = deepest.Inputs(grid, signals)
    t = np.linspace(grid[0], grid[-1], 301)
    expected = np.stack([0.7 - 0.9 * t, 3.0 + 2.0 * t], axis=1)
    np.testing.assert_allclose(_at(inputs, t), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("grid", [np.linspace(-1.0, 2.0, 13), _non_uniform(13, -1.0)])
def test_cubic_reproduces_quadratics(grid):
    def quadratic(t):
        return 1.0 + 2.0 * t - 3.0 * t**2

    inputs = deepest.Inputs(grid, quadratic(grid), interpolation="cubic")
    t = np.linspace(grid[0], grid[-1], 401)
    # the end intervals too: the end slopes are the end parabolas' (one-sided, exact)
    np.testing.assert_allclose(_at(inputs, t)[:, 0], quadratic(t), rtol=0, atol=1e-13)


@pytest.mark.parametrize("interpolation, order", [("linear", 2), ("cubic", 3)])
def test_converges_at_its_order(interpolation, order):
    t = np.linspace(0.0, 2.0, 2001)
    errors = []
    for n in (21, 41, 81):
        grid = np.linspace(0.0, 2.0, n)
        inputs = deepest.Inputs(grid, np.sin(3.0 * grid), interpolation=interpolation)
        errors.append(np.max(np.abs(_at(inputs, t)[:, 0] - np.sin(3.0 * t))))
    orders = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    np.testing.assert_allclose(orders, order, atol=0.15)


def test_cubic_slopes_are_finite_differences():
    # on a uniform grid: central differences inside (Catmull–Rom), the second-order
    # one-sided differences at the ends
    h = 0.25
    grid = h * np.arange(9)
    y = np.random.default_rng(1).normal(size=9)
    inputs = deepest.Inputs(grid, y, interpolation="cubic")
    slopes = _slopes(inputs, grid)[:, 0]
    expected = np.concatenate(
        [
            [(-3 * y[0] + 4 * y[1] - y[2]) / (2 * h)],
            (y[2:] - y[:-2]) / (2 * h),
            [(3 * y[-1] - 4 * y[-2] + y[-3]) / (2 * h)],
        ]
    )
    np.testing.assert_allclose(slopes, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_continuous_and_cubic_is_c1(interpolation):
    grid = _non_uniform(8)
    y = np.random.default_rng(2).normal(size=(8, 2))
    inputs = deepest.Inputs(grid, y, interpolation=interpolation)
    eps = 1e-7  # far beyond the rounding tolerance (~3e-14 here)
    knots = grid[1:-1]
    below, above = _at(inputs, knots - eps), _at(inputs, knots + eps)
    # values: a jump at most the slope times 2ε
    np.testing.assert_allclose(below, above, rtol=0, atol=1e-5)
    jump = np.abs(_slopes(inputs, knots + eps) - _slopes(inputs, knots - eps))
    if interpolation == "cubic":  # slopes: a jump at most the curvature (~1e3) times 2ε
        assert np.max(jump) < 1e-3
    else:  # the linear pieces' slopes differ across a knot
        assert np.min(jump) > 1e-2


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_grad_matches_finite_differences(interpolation):
    grid = _non_uniform(10)
    y = np.sin(2.0 * grid)[:, None] * np.array([1.0, -2.0])
    inputs = deepest.Inputs(grid, y, interpolation=interpolation)
    t = np.random.default_rng(3).uniform(grid[0], grid[-1], 20)
    t = t[np.min(np.abs(t[:, None] - grid), axis=1) > 1e-3]  # clear of the knots
    grad = _slopes(inputs, t)
    d = 1e-6
    fd = (_at(inputs, t + d) - _at(inputs, t - d)) / (2 * d)
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-7)


def test_jit_vmap_grad_and_construction_inside_jit():
    grid = _non_uniform(7)
    y = np.random.default_rng(4).normal(size=(7, 3))
    inputs = deepest.Inputs(grid, y)
    t = 0.5 * (grid[2] + grid[3])
    assert inputs.n_inputs == 3 and inputs(t).shape == (3,)
    jitted = jax.jit(lambda inputs, t: inputs(t))(inputs, t)
    np.testing.assert_allclose(jitted, inputs(t), rtol=1e-14, atol=1e-15)
    assert _at(inputs, np.linspace(0, 2, 5)).shape == (5, 3)
    # d/dt is the linear piece's slope, at a grid time too (the right-hand piece's, here)
    for s in (t, grid[2]):
        grad = jax.grad(lambda s: inputs(s)[1])(s)
        assert float(grad) == pytest.approx((y[3, 1] - y[2, 1]) / (grid[3] - grid[2]), rel=1e-12)

    @jax.jit
    def built_inside(times, values, t):
        return deepest.Inputs(times, values, interpolation="cubic")(t)

    expected = deepest.Inputs(grid, y, interpolation="cubic")(t)
    np.testing.assert_allclose(built_inside(grid, y, t), expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_held_at_the_end_samples_outside(interpolation):
    grid = np.linspace(0.0, 1.0, 6)
    y = np.random.default_rng(5).normal(size=6)
    inputs = deepest.Inputs(grid, y, interpolation=interpolation)
    np.testing.assert_array_equal(_at(inputs, [-3.0, -0.1, 1.1, 7.0])[:, 0], y[[0, 0, -1, -1]])
    assert float(jax.grad(lambda t: inputs(t)[0])(-0.1)) == 0.0


def test_several_signals_are_independent():
    grid = _non_uniform(12)
    y = np.random.default_rng(6).normal(size=(12, 3))
    t = np.linspace(-0.1, 2.1, 57)
    for interpolation in INTERPOLATIONS:
        together = _at(deepest.Inputs(grid, y, interpolation=interpolation), t)
        for k in range(3):
            alone = _at(deepest.Inputs(grid, y[:, k], interpolation=interpolation), t)[:, 0]
            np.testing.assert_allclose(together[:, k], alone, rtol=1e-15, atol=1e-15)


def test_one_floating_dtype():
    # float32 times with float64 samples (under strict promotion), and a grid of integers
    inputs = deepest.Inputs(np.arange(5, dtype=np.float32), np.arange(5.0) ** 2)
    assert inputs.times.dtype == inputs.values.dtype == jnp.float64
    assert float(inputs(2.5)[0]) == 6.5
    inputs = deepest.Inputs(np.arange(5), np.arange(5) ** 2, interpolation="cubic")
    assert inputs.values.dtype == jnp.float64 and float(inputs(2.5)[0]) == 6.25


def test_covers():
    inputs = deepest.Inputs(np.linspace(0.0, 0.8, 9), np.ones(9))
    assert inputs.covers(0.0, 0.8) and inputs.covers(0.1, 0.5)
    assert inputs.covers(-1e-17, 0.8 * (1 + 1e-15))  # rounding of the ends
    assert not inputs.covers(0.0, 0.81) and not inputs.covers(-0.01, 0.5)
    inputs.check_covers(0.0, 0.8, "the window")
    with pytest.raises(
        ValueError, match=re.escape("The inputs cover [0.0, 0.8]; the window needs [0.0, 1.0]")
    ):
        inputs.check_covers(0.0, 1.0, "the window")
    with pytest.raises(ValueError, match=re.escape("the prediction needs [-0.5, 0.5]")):
        inputs.check_covers(-0.5, 0.5, "the prediction")


GRID = np.linspace(0.0, 1.0, 11)


@pytest.mark.parametrize(
    "times, values, kwargs, message",
    [
        (
            GRID[None],
            np.ones(11),
            {},
            "`times` must be 1-D with at least 2 samples; got shape (1, 11)",
        ),
        (GRID[:1], np.ones(1), {}, "at least 2 samples; got shape (1,)"),
        (GRID, np.ones(10), {}, "n_times = 11 (one row per time) and n_inputs ≥ 1; got (10,)"),
        (GRID, np.ones((11, 0)), {}, "n_inputs ≥ 1; got (11, 0)"),
        (GRID, np.ones((11, 2, 1)), {}, "got (11, 2, 1)"),
        (
            GRID,
            np.where(np.arange(11) == 4, np.nan, 1.0),
            {},
            "not finite (nan) at row 4 (t = 0.4)",
        ),
        (
            GRID,
            np.where(np.arange(22).reshape(11, 2) == 5, np.inf, 1.0),
            {},
            "(inf) at row 2, signal 1",
        ),
        (
            np.where(np.arange(11) == 3, np.nan, GRID),
            np.ones(11),
            {},
            "`times` are not finite (nan) at index 3",
        ),
        (
            np.array([0.0, 0.1, 0.2, 0.3, 0.3]),
            np.ones(5),
            {},
            "times[4] = 0.3 follows times[3] = 0.3",
        ),
        (np.array([0.0, 0.2, 0.1]), np.ones(3), {}, "strictly increasing; times[2] = 0.1 follows"),
        (
            np.array([0.0, 1.0, 1.0 + 1e-15]),
            np.ones(3),
            {},
            "too close to tell apart from rounding",
        ),
        (GRID, ["a"] * 11, {}, "`values` must be an array of real numbers"),
        (
            GRID,
            np.ones(11),
            {"interpolation": "spline"},
            "Unknown `interpolation` 'spline'; choose one of 'linear', 'cubic'",
        ),
    ],
)
def test_bad_inputs_are_refused(times, values, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        deepest.Inputs(times, values, **kwargs)


def test_a_time_must_be_a_scalar():
    with pytest.raises(ValueError, match="one scalar time; got shape \\(2,\\)"):
        deepest.Inputs(GRID, np.ones(11))(jnp.zeros(2))


def test_load_round_trip(tmp_path):
    times = _non_uniform(15)
    values = np.random.default_rng(7).normal(size=(15, 2))
    expected = deepest.Inputs(times, values, interpolation="cubic")
    t = np.linspace(0.0, 2.0, 31)

    def check(inputs):
        assert inputs.interpolation == "cubic" and inputs.n_inputs == 2
        np.testing.assert_array_equal(inputs.times, times)
        np.testing.assert_array_equal(inputs.values, values)
        np.testing.assert_array_equal(_at(inputs, t), _at(expected, t))

    load = deepest.Inputs.load
    np.save(tmp_path / "stim.npy", np.column_stack([times, values]))
    check(load(tmp_path / "stim.npy", interpolation="cubic"))
    np.save(tmp_path / "last.npy", np.column_stack([values, times]))
    check(load(str(tmp_path / "last.npy"), time_column=-1, interpolation="cubic"))
    np.savez(tmp_path / "stim.npz", times=times, values=values)
    check(load(tmp_path / "stim.npz", interpolation="cubic"))
    table = np.column_stack([times, values])
    np.savetxt(tmp_path / "stim.csv", table, delimiter=",", header="t,I1,I2", comments="")
    check(load(tmp_path / "stim.csv", interpolation="cubic"))
    np.savetxt(tmp_path / "bare.csv", table, delimiter=",", header="a stimulus")  # "# ..."
    check(load(tmp_path / "bare.csv", interpolation="cubic"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("t,I\n0,1\n0.5,abc\n1,2\n", ":3:2: cell 'abc' is not a finite number"),
        ("t,I\n0,1\n0.5,nan\n1,2\n", ":3:2: cell 'nan' is not a finite number"),
        ("t,I\n0,1\n0.5,1,2\n", ":3: expected 2 cells (as in the first row), got 3"),
        (
            "t,I\n0,1\n\n# a comment\n0.5,1\n0.5,2\n",
            ":6:1: the time 0.5 does not follow 0.5 (line 5)",
        ),
        ("t,I\n", ": no rows of numbers"),
        ("0\n1\n", ": expected a table of a time column and at least one signal column"),
    ],
)
def test_csv_errors_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "stim.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{path}{message}")):
        deepest.Inputs.load(path)


def test_file_errors_name_the_file(tmp_path):
    load = deepest.Inputs.load
    np.save(tmp_path / "flat.npy", np.ones(5))
    np.save(tmp_path / "nan.npy", np.column_stack([GRID, np.where(GRID > 0.5, np.nan, 0.0)]))
    np.savez(tmp_path / "partial.npz", times=GRID)
    (tmp_path / "stim.txt").write_text("0,1\n1,2\n")
    cases = {
        "flat.npy": "expected a table of a time column and at least one signal column; got "
        "an array of shape (5,)",
        "nan.npy": "The input `values` are not finite (nan) at row 6 (t = 0.6",
        "partial.npz": "an `.npz` file of inputs holds arrays `times` and `values`; it lacks "
        "'values' (it has ['times'])",
        "stim.txt": "inputs are read from `.csv`, `.npy` or `.npz` files",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name}: {message}")):
            load(tmp_path / name)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'flat.npy'}: `time_column` 3")):
        np.save(tmp_path / "flat.npy", np.ones((4, 2)))
        load(tmp_path / "flat.npy", time_column=3)
