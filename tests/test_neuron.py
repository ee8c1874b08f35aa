"""Neuron models and what to measure of them: NaKL's and Hodgkin–Huxley's fields against
hand-written NumPy transcriptions of their equations (and their derivatives against finite
differences); the classic behaviour under a constant current (rest near −65 mV at I = 0,
repetitive firing at I = 10 µA/cm²); the HH rates at their removable singularities; spike
times of a sampled sine; the coincidence factor Γ against values worked by hand."""

import dataclasses
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deepest
from deepest.models import HodgkinHuxley, NaKL, hodgkin_huxley_rates

NAKL_NAMES = "gNa gK gL ENa EK EL Vtm Vsm t1m t2m Vth Vsh t1h t2h Vtn Vsn t1n t2n".split()


def _nakl_numpy(x, i, p):
    """varanneal's NaKL equations, transcribed independently of the module."""
    v, m, h, n = x
    dv = (
        p["gNa"] * m**3 * h * (p["ENa"] - v)
        + p["gK"] * n**4 * (p["EK"] - v)
        + p["gL"] * (p["EL"] - v)
        + i
    )
    out = [dv]
    for z, g in ((m, "m"), (h, "h"), (n, "n")):
        arg = (v - p[f"Vt{g}"]) / p[f"Vs{g}"]
        z_inf = 0.5 * (1 + np.tanh(arg))
        tau = p[f"t1{g}"] + p[f"t2{g}"] * (1 - np.tanh(arg) ** 2)
        out.append((z_inf - z) / tau)
    return np.array(out)


def _hh_numpy(x, i, p):
    """Hodgkin–Huxley in the modern convention, with the textbook (naive) rates."""
    v, m, h, n = x
    am = 0.1 * (v + 40) / (1 - np.exp(-(v + 40) / 10))
    bm = 4 * np.exp(-(v + 65) / 18)
    ah = 0.07 * np.exp(-(v + 65) / 20)
    bh = 1 / (1 + np.exp(-(v + 35) / 10))
    an = 0.01 * (v + 55) / (1 - np.exp(-(v + 55) / 10))
    bn = 0.125 * np.exp(-(v + 65) / 80)
    current = (
        p["gNa"] * m**3 * h * (p["ENa"] - v)
        + p["gK"] * n**4 * (p["EK"] - v)
        + p["gL"] * (p["EL"] - v)
        + i
    )
    return np.array(
        [current / p["C"], am * (1 - m) - bm * m, ah * (1 - h) - bh * h, an * (1 - n) - bn * n]
    )


def _random_model(cls, rng):
    """The model with each parameter drawn uniformly from its box."""
    values = {k: rng.uniform(lo, hi) for k, (lo, hi) in cls.bounds.items()}
    return cls(**values), values


def _random_states(rng, k):
    # V away from HH's singular points (−40, −55) so the naive NumPy rates are accurate.
    v = rng.uniform(-90.0, 40.0, k)
    v = np.where(np.minimum(abs(v + 40), abs(v + 55)) < 0.5, v + 1.0, v)
    return np.column_stack([v, rng.uniform(0.0, 1.0, (k, 3))])


@pytest.mark.parametrize("cls, numpy_field", [(NaKL, _nakl_numpy), (HodgkinHuxley, _hh_numpy)])
def test_field_matches_numpy_transcription(cls, numpy_field):
    rng = np.random.default_rng(0)
    model, values = _random_model(cls, rng)
    field = jax.jit(model.__call__)
    for x, i in zip(_random_states(rng, 20), rng.uniform(-20.0, 20.0, 20), strict=True):
        got = np.asarray(field(0.0, jnp.asarray(x), jnp.asarray([i])))
        want = numpy_field(x, i, values)
        # Rounding only: both evaluate the same formulas in float64 (dV/dt sums terms of
        # up to ~10⁴, so compare on the scale of the largest term, not of the result).
        scale = np.array([1e4, 10.0, 10.0, 10.0])
        np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls, numpy_field", [(NaKL, _nakl_numpy), (HodgkinHuxley, _hh_numpy)])
def test_gradient_matches_finite_differences(cls, numpy_field):
    """jax.grad of w·F with respect to the state and to every parameter, against central
    differences of the NumPy transcription."""
    rng = np.random.default_rng(1)
    model, values = _random_model(cls, rng)
    x, i, w = _random_states(rng, 1)[0], 7.0, rng.normal(size=4)

    def objective(model, x):
        return jnp.dot(jnp.asarray(w), model(0.0, x, jnp.asarray([i])))

    model = jax.tree.map(jnp.asarray, model)
    grad_model, grad_x = (
        eqx.filter_jit(eqx.filter_grad(objective))(model, jnp.asarray(x)),
        jax.jit(jax.grad(objective, argnums=1))(model, jnp.asarray(x)),
    )

    def numpy_objective(x, values):
        return w @ numpy_field(x, i, values)

    # Central differences: truncation O(h²) and rounding O(ε/h) at h ~ 1e-5 relative, so
    # about 1e-9 of the derivative's scale; 1e-7 leaves room for the larger terms of dV/dt.
    for k in range(4):
        h = 1e-5 * max(1.0, abs(x[k]))
        e = np.eye(4)[k] * h
        fd = (numpy_objective(x + e, values) - numpy_objective(x - e, values)) / (2 * h)
        np.testing.assert_allclose(grad_x[k], fd, rtol=1e-7, atol=1e-7)
    for name, value in values.items():
        h = 1e-5 * abs(value)
        up, down = {**values, name: value + h}, {**values, name: value - h}
        fd = (numpy_objective(x, up) - numpy_objective(x, down)) / (2 * h)
        np.testing.assert_allclose(getattr(grad_model, name), fd, rtol=1e-7, atol=1e-7)


def test_parameters_and_boxes():
    names = tuple(f.name for f in dataclasses.fields(NaKL))
    assert names == tuple(NAKL_NAMES)
    # What an assimilation may estimate: the 18 float fields, in order.
    _, values = deepest.models.parametrised(NaKL())
    assert tuple(values) == tuple(NAKL_NAMES)
    nakl = NaKL()
    assert (nakl.gNa, nakl.gK, nakl.gL, nakl.EK, nakl.t2h) == (120.0, 20.0, 0.3, -77.0, 7.0)
    assert nakl.Vsm == 1 / 0.06667 and nakl.Vsh == -1 / 0.06667 and nakl.Vsn == 1 / 0.03333
    np.testing.assert_allclose(NaKL.bounds["gNa"], (60.0, 180.0))
    np.testing.assert_allclose(NaKL.bounds["gL"], (0.15, 0.45))
    np.testing.assert_allclose(NaKL.bounds["EK"], (-80.85, -73.15))
    np.testing.assert_allclose(NaKL.bounds["Vsh"], (-1.05 / 0.06667, -0.95 / 0.06667))
    np.testing.assert_allclose(NaKL.bounds["t1m"], (0.095, 0.105))
    np.testing.assert_allclose(HodgkinHuxley.bounds["gK"], (18.0, 54.0))
    np.testing.assert_allclose(HodgkinHuxley.bounds["EL"], (-1.05 * 54.387, -0.95 * 54.387))
    for cls in (NaKL, HodgkinHuxley):
        assert set(cls.bounds) == {f.name for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            lo, hi = cls.bounds[f.name]
            assert lo < f.default < hi
        assert cls.state_bounds == ((-100.0, 100.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0))
        assert cls.n_inputs == 1
        assert deepest.models.takes_input(cls())
        cls().check_dim(4)
        with pytest.raises(ValueError, match=f"{cls.__name__} has exactly 4 components"):
            cls().check_dim(3)


@eqx.filter_jit
def _voltage(model, current, x0, t_end=100.0):
    """V(t) sampled every 0.05 ms under a constant current (Tsit5, fixed step 0.02 ms:
    the fastest time constant, NaKL's τ_m ≥ 0.1 ms, is resolved)."""
    ts = jnp.linspace(0.0, t_end, round(t_end / 0.05) + 1)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, x, u: model(t, x, u)),
        diffrax.Tsit5(),
        0.0,
        t_end,
        0.02,
        x0,
        args=jnp.reshape(current, (1,)),
        saveat=diffrax.SaveAt(ts=ts),
        max_steps=round(t_end / 0.02) + 1,
    )
    return ts, sol.ys[:, 0]


@pytest.mark.parametrize("cls", [NaKL, HodgkinHuxley])
def test_rests_at_zero_current_and_fires_repetitively_at_ten(cls):
    x0 = jnp.array([-65.0, 0.05, 0.6, 0.32])
    ts, v = (np.asarray(a) for a in _voltage(cls(), jnp.asarray(0.0), x0))
    assert deepest.spike_times(ts, v).size == 0
    tail = v[ts > 80.0]
    assert np.ptp(tail) < 1e-3  # at rest: V has settled to a fixed point
    if cls is HodgkinHuxley:  # the classic resting potential of the modern convention
        assert abs(tail[-1] + 65.0) < 0.1
    else:
        assert -70.0 < tail[-1] < -60.0

    ts, v = (np.asarray(a) for a in _voltage(cls(), jnp.asarray(10.0), x0))
    spikes = deepest.spike_times(ts, v)
    assert spikes.size >= 6
    intervals = np.diff(spikes[1:])  # after the first spike, a regular train
    assert 12.0 < intervals.mean() < 18.0  # HH at 10 µA/cm²: ~68 Hz, period ≈ 14.6 ms
    assert np.ptp(intervals) < 0.02 * intervals.mean()


@pytest.mark.parametrize("v0, alpha, limit, slope", [(-40.0, 0, 1.0, 0.05), (-55.0, 4, 0.1, 0.005)])
def test_hh_rates_at_their_removable_singularities(v0, alpha, limit, slope):
    """α_m = f((V + 40)/10), α_n = 0.1 f((V + 55)/10) with f(x) = x/(1 − e^{−x}) =
    1 + x/2 + x²/12 − …: at the singular point α, α′ and α″ are limit, limit/20 and
    limit/600."""
    rate = lambda v: hodgkin_huxley_rates(v)[alpha]  # noqa: E731
    value, first, second = jax.jit(
        lambda v: (rate(v), jax.grad(rate)(v), jax.grad(jax.grad(rate))(v))
    )(v0)
    assert float(value) == pytest.approx(limit, rel=1e-15)
    assert float(first) == pytest.approx(slope, rel=1e-14)
    assert float(second) == pytest.approx(limit / 600, rel=1e-10)
    # Either side of the switch to the series (|x| = 1e-2, i.e. 0.1 mV) and beyond, the
    # textbook formula in NumPy: relative cancellation ε/|x| ≤ 1e-13 at these points.
    c = 0.1 if alpha == 0 else 0.01
    dv = np.array([-1.0, -0.1001, -0.0999, 0.0999, 0.1001, 1.0])
    naive = c * dv / (1 - np.exp(-dv / 10))
    np.testing.assert_allclose(rate(jnp.asarray(v0 + dv)), naive, rtol=1e-12)
    field = lambda x: HodgkinHuxley()(0.0, x, jnp.array([0.0]))  # noqa: E731
    jac = jax.jit(jax.jacfwd(field))(jnp.array([v0, 0.1, 0.5, 0.4]))
    assert np.all(np.isfinite(np.asarray(jac)))


def test_spike_times_of_a_sine():
    period, dt = 10.0, 0.01
    t = 0.003 + dt * np.arange(5000)  # a grid that misses the crossings
    v = np.sin(2 * np.pi * t / period)
    # Upward crossings of 0 at t = kP; of ½ at kP + P/12 (arcsin ½ = π/6). The error of
    # linear interpolation is ≤ dt²/8·|V″|/|V′| ≈ 5e-6 here (0 at the zero crossings).
    np.testing.assert_allclose(deepest.spike_times(t, v), period * np.arange(1, 5), atol=1e-9)
    want = period * np.arange(5) + period / 12
    np.testing.assert_allclose(deepest.spike_times(t, v, threshold=0.5), want, atol=1e-5)
    # Exact for a piecewise-linear voltage; a sample on the threshold counts once, and a
    # downward crossing not at all.
    got = deepest.spike_times([0.0, 1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 2.0, -1.0, 3.0])
    np.testing.assert_allclose(got, [1.0, 3.25], rtol=0, atol=0)
    assert deepest.spike_times([0.0, 1.0], [-1.0, -0.5]).size == 0
    with pytest.raises(ValueError, match="strictly increasing"):
        deepest.spike_times([0.0, 2.0, 1.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="same length"):
        deepest.spike_times([0.0, 1.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="`voltage` must be finite"):
        deepest.spike_times([0.0, 1.0], [0.0, np.nan])


def test_coincidence_factor_worked_by_hand():
    gamma = deepest.coincidence_factor
    train = 25.0 + 50.0 * np.arange(10)
    assert gamma(train, train, delta=2.0, duration=500.0) == pytest.approx(1.0, rel=1e-15)
    # Shifted by 3 > Δ = 2: nothing coincides, 2νΔ = 2·(10/500)·2 = 0.08, so
    # Γ = −0.08·10/10/0.92 = −2/23.
    shifted = gamma(train, train + 3.0, delta=2.0, duration=500.0)
    assert shifted == pytest.approx(-2 / 23, rel=1e-14)
    # Data (10, 50, 90), model (11, 70, 91.5, 120), duration 200: 2 coincidences,
    # 2νΔ = 2·(4/200)·2 = 0.08, ⟨N⟩ = 0.24, Γ = 1.76/3.5/0.92 = 88/161.
    got = gamma([10.0, 50.0, 90.0], [11.0, 70.0, 91.5, 120.0], delta=2.0, duration=200.0)
    assert got == pytest.approx(88 / 161, rel=1e-14)
    # Each data spike is matched at most once, and each model spike: data (10, 11),
    # model (10.5): one coincidence; 2νΔ = 0.04, ⟨N⟩ = 0.08, Γ = 0.92/1.5/0.96 = 23/36.
    got = gamma([10.0, 11.0], [10.5], delta=2.0, duration=100.0)
    assert got == pytest.approx(23 / 36, rel=1e-14)
    # The largest matching: 2 may pair with 0.1 or 3.5, but 4.1 only with 3.5; pairing
    # 2 with its nearest (3.5) would leave 4.1 alone (Γ = 0.84/2/0.92 ≈ 0.457).
    got = gamma([2.0, 4.1], [0.1, 3.5], delta=2.0, duration=100.0)
    assert got == pytest.approx(1.0, rel=1e-14)


def test_coincidence_factor_of_independent_poisson_trains_is_near_zero():
    rng = np.random.default_rng(2)
    duration, rate = 100_000.0, 0.02  # 20 Hz for 100 s, in ms

    def poisson():
        return np.sort(rng.uniform(0.0, duration, rng.poisson(rate * duration)))

    # N_coinc ≈ Poisson(160) about its mean: Γ's spread ≈ √160/2000/0.92 ≈ 0.007.
    values = [deepest.coincidence_factor(poisson(), poisson(), duration=duration) for _ in range(3)]
    assert np.all(np.abs(values) < 0.03)


def test_coincidence_factor_edge_cases_and_bad_input():
    gamma = deepest.coincidence_factor
    assert math.isnan(gamma([], [], duration=100.0))
    assert gamma([10.0, 20.0], [], duration=100.0) == 0.0
    assert gamma([], [10.0], duration=100.0) == 0.0
    with pytest.raises(ValueError, match="`delta` must be positive"):
        gamma([1.0], [1.0], delta=-1.0, duration=10.0)
    with pytest.raises(ValueError, match="`delta` must be positive"):
        gamma([1.0], [1.0], delta=0.0, duration=10.0)
    with pytest.raises(ValueError, match="`duration` must be positive"):
        gamma([1.0], [1.0], duration=0.0)
    with pytest.raises(ValueError, match="`model_spikes` must be sorted"):
        gamma([1.0], [5.0, 2.0], duration=10.0)
    with pytest.raises(ValueError, match="`data_spikes` must be 1-D"):
        gamma([[1.0]], [1.0], duration=10.0)
    with pytest.raises(ValueError, match="longer than `duration`"):
        gamma([1.0], [30.0], duration=10.0)
    with pytest.raises(ValueError, match="2νΔ = 1.2 ≥ 1"):
        gamma([1.0], [1.0, 2.0, 3.0], delta=2.0, duration=10.0)
    with pytest.raises(TypeError):
        gamma([1.0], [1.0], 2.0, 10.0)  # delta and duration are keywords


def test_plot_neuron():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.linspace(0.0, 10.0, 11)
    data, estimate = np.sin(t), np.cos(t)
    future = (np.linspace(10.0, 15.0, 6), np.zeros(6))
    stimulus = (np.linspace(0.0, 15.0, 16), np.ones(16))
    fig = deepest.plot_neuron(
        t, data, estimate, prediction=future, stimulus=stimulus, truth=(t, data + 1)
    )
    v_ax, i_ax = fig.axes
    lines = {line.get_label(): line for line in v_ax.lines}
    assert {"data", "truth", "estimate", "prediction"} <= set(lines)
    np.testing.assert_array_equal(lines["estimate"].get_ydata(), estimate)
    np.testing.assert_array_equal(lines["prediction"].get_xdata(), future[0])
    np.testing.assert_array_equal(i_ax.lines[0].get_ydata(), stimulus[1])
    plt.close(fig)
    _, ax = plt.subplots()
    assert deepest.plot_neuron(t, data, estimate, ax=ax) is ax.figure
    with pytest.raises(ValueError, match="a pair"):
        deepest.plot_neuron(t, data, estimate, stimulus=stimulus, ax=ax)
    plt.close("all")
