"""Every concrete problem's action, against formulas written out here: its value, its
banded residuals (their squares sum to it) and A₀ = (n_m/2)·A with the counts by hand."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest
from deepest.discretisations import DISCRETISATIONS

DIM, OBSERVED, N_OBS, DT, FORCING = 6, (0, 2, 3), 6, 0.05, 8.0
RM = np.array([10.0, 20.0, 5.0])
RF_VECTOR = np.linspace(1.0, 3.0, DIM)


def _lorenz96(x, forcing):
    return np.array([(x[(i + 1) % DIM] - x[i - 2]) * x[i - 1] - x[i] + forcing for i in range(DIM)])


def _data(masked: bool):
    data = deepest.twin_experiment(
        deepest.models.Lorenz96(FORCING), DIM, N_OBS, DT, OBSERVED, 0.2, jr.key(0)
    )
    if not masked:
        return data, np.ones((N_OBS, len(OBSERVED)), bool)
    mask = np.ones((N_OBS, len(OBSERVED)), bool)
    mask[1, 0] = mask[4, 2] = mask[5, 1] = False
    values = np.asarray(data.values).copy()
    values[~mask] = np.nan  # unmeasured: must reach neither the action nor its gradient
    return deepest.Observations(data.times, values, OBSERVED, truth=data.truth, mask=mask), mask


def _interval_residuals(name, x0, x1, xm, h, forcing):
    """The model residuals of one interval, from each scheme's definition."""
    f = lambda x: _lorenz96(x, forcing)  # noqa: E731
    if name == "euler":
        return [x1 - x0 - h * f(x0)]
    if name == "trapezoid":
        return [x1 - x0 - h / 2 * (f(x0) + f(x1))]
    if name == "rk4":
        k1 = f(x0)
        k2 = f(x0 + h / 2 * k1)
        k3 = f(x0 + h / 2 * k2)
        k4 = f(x0 + h * k3)
        return [x1 - x0 - h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)]
    if name == "simpson_hermite":
        return [
            x1 - x0 - h / 6 * (f(x0) + 4 * f(xm) + f(x1)),
            xm - (x0 + x1) / 2 - h / 8 * (f(x0) - f(x1)),
        ]
    assert name == "gauss_legendre"
    out = []
    for s in (0.5 - math.sqrt(3) / 6, 0.5 + math.sqrt(3) / 6):
        # the quadratic through (0, x0), (1/2, xm), (1, x1) by its Lagrange basis
        x = 2 * (s - 0.5) * (s - 1) * x0 - 4 * s * (s - 1) * xm + 2 * s * (s - 0.5) * x1
        slope = (4 * s - 3) * x0 + (4 - 8 * s) * xm + (4 * s - 1) * x1  # d/ds
        out.append(math.sqrt(0.5) * (slope - h * f(x)))
    return out


def _assimilation_by_hand(problem, u, rf, name, spo, mask):
    """(A, n_m, n_f) of an Assimilation from its formula."""
    path = np.asarray(u["path"])
    forcing = float(u["params"]["forcing"])
    values = np.asarray(problem.data.values)
    measured = 0.0
    for n in range(N_OBS):
        for j, component in enumerate(OBSERVED):
            if mask[n, j]:
                measured += RM[j] * (path[n * spo, component] - values[n, j]) ** 2
    n_m = int(mask.sum())
    n_model = (N_OBS - 1) * spo + 1
    h = DT / spo
    rf = np.broadcast_to(np.asarray(rf, float), (DIM,))
    model = 0.0
    for n in range(n_model - 1):
        xm = None if "midpoints" not in u else np.asarray(u["midpoints"][n])
        for r in _interval_residuals(name, path[n], path[n + 1], xm, h, forcing):
            model += np.sum(rf * r**2)
    n_f = DIM * (n_model - 1)
    return measured / n_m + model / n_f, n_m, n_f


def _perturbed(problem, key):
    u = problem.init(key)
    u = jax.tree.map(jnp.nan_to_num, u)  # masked NaN data are interpolated into the guess
    leaves, tree = jax.tree.flatten(u)
    keys = jr.split(jr.key(7), len(leaves))
    return jax.tree.unflatten(
        tree, [a + 0.3 * jr.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    )


ASSIMILATIONS = [
    (d.name, spo, masked, rf)
    for d in DISCRETISATIONS
    for spo, masked, rf in ((1, False, 2.5), (3, True, RF_VECTOR))
]


@pytest.mark.parametrize(
    "name,spo,masked,rf",
    ASSIMILATIONS,
    ids=[f"{n}-spo{s}-{'masked' if m else 'full'}-rf{np.ndim(r)}d" for n, s, m, r in ASSIMILATIONS],
)
def test_assimilation_action(name, spo, masked, rf):
    data, mask = _data(masked)
    problem = deepest.Assimilation(
        deepest.models.Lorenz96(FORCING),
        data,
        RM,
        discretisation=name,
        steps_per_obs=spo,
        estimate=("forcing",),
    )
    u = _perturbed(problem, jr.key(1))
    expected, n_m, n_f = _assimilation_by_hand(problem, u, rf, name, spo, mask)
    action = float(problem.action(u, rf))
    assert action == pytest.approx(expected, rel=1e-12)
    unit, _, _ = _assimilation_by_hand(problem, u, 1.0, name, spo, mask)
    measured, _, _ = _assimilation_by_hand(problem, u, 0.0, name, spo, mask)
    assert float(problem.measurement_error(u)) == pytest.approx(measured, rel=1e-12)
    assert float(problem.model_error(u)) == pytest.approx(unit - measured, rel=1e-12)
    if np.ndim(rf) == 0:
        assert float(problem.model_term(u, rf)) == pytest.approx(rf * (unit - measured), rel=1e-12)
    # the banded residuals: their squares sum to the action, in the banded layout
    states, params = problem.to_banded(u)
    node, interval = problem.banded_residuals(states, params, rf)
    n_model = (N_OBS - 1) * spo + 1
    width = 2 if name in ("simpson_hermite", "gauss_legendre") else 1
    assert node.shape == (n_model, len(OBSERVED))
    assert interval.shape == (n_model - 1, width * DIM)
    between = np.setdiff1d(np.arange(n_model), np.arange(0, n_model, spo))
    assert np.all(np.asarray(node)[between] == 0)
    assert np.all(np.isfinite(node)) and np.all(np.isfinite(interval))
    total = float(jnp.sum(node**2) + jnp.sum(interval**2))
    assert total == pytest.approx(expected, rel=1e-12)
    # A₀ = (n_m/2)·A, the counts by hand
    counts = problem.action_counts
    assert (float(counts[0]), int(counts[1])) == (n_m, n_f)
    assert float(problem.unnormalised_action(u, rf)) == pytest.approx(n_m / 2 * expected, rel=1e-12)
    node0, interval0 = problem.unnormalised_banded_residuals(states, params, rf)
    a0 = 0.5 * float(jnp.sum(node0**2) + jnp.sum(interval0**2))
    assert a0 == pytest.approx(n_m / 2 * expected, rel=1e-12)
    # masked NaN data reach no gradient
    grad = jax.grad(problem.action)(u, rf)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))


def _layers(net):
    """The layer maps f_0..f_{L−1} of a layered network, one module per layer."""
    out = []
    for layer, n in zip(net.layers, net.stack_lengths, strict=True):
        params, static = eqx.partition(layer, eqx.is_array)
        if n == 1:
            out.append(layer)
        else:
            out += [
                eqx.combine(jax.tree.map(lambda a, i=i: a[i], params), static) for i in range(n)
            ]
    return out


@pytest.mark.parametrize("rm", [2.0, (2.0, 5.0)], ids=["rm-scalar", "rm-pair"])
@pytest.mark.parametrize("widths", [(3, 5, 4, 2), (3, 5, 5, 5, 2)], ids=["plain", "stacked"])
def test_layered_training_action(widths, rm):
    m, rf = 7, 3.0
    net = deepest.LayeredNetwork(list(widths), jnp.tanh, key=jr.key(0))
    inputs = np.asarray(jr.normal(jr.key(3), (m, widths[0])))
    targets = np.asarray(jr.normal(jr.key(4), (m, widths[-1])))
    problem = deepest.training(net, inputs, targets, jnp.asarray(rm))
    u = _perturbed(problem, jr.key(5))
    states = [np.asarray(u["states"][k]) for k in sorted(u["states"])]
    rm_in, rm_out = (rm, rm) if np.ndim(rm) == 0 else rm
    measured = rm_in * np.sum((states[0] - inputs) ** 2) + rm_out * np.sum(
        (states[-1] - targets) ** 2
    )
    layers = _layers(problem.to_model(u))
    assert len(layers) == len(widths) - 1
    model = sum(
        np.sum((states[i + 1] - np.asarray(jax.vmap(f)(states[i]))) ** 2)
        for i, f in enumerate(layers)
    )
    n_m, n_f = m * (widths[0] + widths[-1]), m * sum(widths[1:])
    expected = measured / n_m + rf * model / n_f
    assert float(problem.action(u, rf)) == pytest.approx(expected, rel=1e-12)
    assert float(problem.measurement_error(u)) == pytest.approx(measured / n_m, rel=1e-12)
    assert float(problem.model_error(u)) == pytest.approx(model / n_f, rel=1e-12)
    assert tuple(int(c) for c in problem.action_counts) == (n_m, n_f)
    assert float(problem.unnormalised_action(u, rf)) == pytest.approx(n_m / 2 * expected, rel=1e-12)


def test_recurrent_training_action():
    m, t, n_in, n_h, n_y, rm, rf = 5, 6, 2, 4, 3, 2.0, 3.0
    net = deepest.RecurrentNetwork(n_in, n_h, n_y, key=jr.key(0))
    inputs = np.asarray(jr.normal(jr.key(3), (m, t, n_in)))
    targets = np.asarray(jr.normal(jr.key(4), (m, t, n_y)))
    problem = deepest.training(net, inputs, targets, rm)
    u = _perturbed(problem, jr.key(5))
    trained = problem.to_model(u)
    hs = np.asarray(u["states"])  # h(1..T) of every sequence
    measured = model = 0.0
    for k in range(m):
        h = np.asarray(trained.initial_state)
        for step in range(t):
            model += np.sum((hs[k, step] - np.asarray(trained.cell(h, inputs[k, step]))) ** 2)
            h = hs[k, step]
            measured += np.sum((np.asarray(trained.readout(h)) - targets[k, step]) ** 2)
    n_m, n_f = m * t * n_y, m * t * n_h
    expected = rm * measured / n_m + rf * model / n_f
    assert float(problem.action(u, rf)) == pytest.approx(expected, rel=1e-12)
    assert float(problem.measurement_error(u)) == pytest.approx(rm * measured / n_m, rel=1e-12)
    assert float(problem.model_error(u)) == pytest.approx(model / n_f, rel=1e-12)
    assert tuple(int(c) for c in problem.action_counts) == (n_m, n_f)
    assert float(problem.unnormalised_action(u, rf)) == pytest.approx(n_m / 2 * expected, rel=1e-12)


def test_continuous_assimilation_action():
    """A = ∫ |p|²/(2 R_f) dt + (R_m/2) Σ_measured (x − y)² along a solution, the
    quadrature checked by a fine trapezoid rule on the same interpolant."""

    class Field(eqx.Module):
        w: jax.Array

        def __call__(self, t, x):
            return jnp.tanh(self.w @ x)

    mask = np.array([[True, True], [True, False], [True, True]])
    data = deepest.Observations(
        [0.0, 0.5, 1.0], [[1.0, -0.5], [0.3, np.nan], [0.2, 0.8]], [0, 1], mask=mask
    )
    rm, rf = np.array([10.0, 4.0]), 5.0
    problem = deepest.ContinuousAssimilation(
        Field(jnp.array([[0.3, -1.0], [0.8, 0.2]])), data, rm, rf
    )
    sol = deepest.solve_tpbvp(problem, deepest.MultipleShooting(4, steps_per_segment=32))
    xs = np.stack([np.asarray(sol.evaluate(t)[0]) for t in (0.0, 0.5, 1.0)])
    values = np.nan_to_num(np.asarray([[1.0, -0.5], [0.3, 0.0], [0.2, 0.8]]))
    measured = 0.5 * np.sum(mask * rm * (xs - values) ** 2)
    model = 0.0
    for a, b in ((0.0, 0.5 - 1e-13), (0.5, 1.0)):  # p jumps at the interior measurement
        ts = np.linspace(a, b, 10001)
        ps = np.asarray(jax.vmap(lambda t: sol.evaluate(t)[1])(jnp.asarray(ts)))
        model += np.trapezoid(np.sum(ps**2, axis=1) / (2 * rf), ts)
    assert float(problem.measurement_error(sol)) == pytest.approx(measured, rel=1e-12)
    assert float(problem.action(sol)) == pytest.approx(model + measured, rel=1e-6)
    assert model > 1e-3 * measured > 0  # both terms count


def test_discrete_weights_formula():
    """R_f^disc = R_f·D·T/(2h²), R_m^disc = R_m·n_measured/2, written out."""
    rf, rm = deepest.discrete_weights(2.0, 3.0, dim=3, t1=1.5, n_steps=7, n_measured=11)
    h = 1.5 / 7
    assert float(rf) == pytest.approx(2.0 * 3 * 1.5 / (2 * h**2), rel=1e-14)
    assert float(rm) == pytest.approx(3.0 * 11 / 2, rel=1e-14)
