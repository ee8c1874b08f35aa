"""Driven models: `Assimilation(..., inputs=deepest.Inputs(...))` gives the model u(t) at
every time a discretisation evaluates it. Each scheme, solved exactly on the linear driven
system ẋ = −kx + u(t), converges to its closed form at the scheme's own order; at the
inputs' grid times the model sees the samples themselves; `predict` continues the inputs
and matches a diffrax solve of the driven model; a model and inputs that do not fit are
refused before compute."""

import os
import re

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest
import deepest.experiments
from deepest.cli import main

from .helpers import ROOT

K, A, B = 1.5, 0.7, -0.9  # ẋ = −K x + u(t), u(t) = A + B t


def _field(t, x, params, u):
    return -params["k"] * x + u


def _closed_form(t, x0):
    """x(t) of ẋ = −K x + A + B t from x(0) = x0."""
    steady = A / K - B / K**2 + B * t / K
    return steady + (x0 - (A / K - B / K**2)) * np.exp(-K * t)


def _problem(discretisation, h, t_end=1.0, inputs=None, **kwargs):
    n = round(t_end / h) + 1
    times = np.linspace(0.0, t_end, n)
    data = deepest.Observations(times, np.zeros((n, 1)), observed=[0])
    if inputs is None:  # a linear signal, sampled on its own coarser grid
        grid = np.linspace(-0.5, t_end + 0.5, 7)
        inputs = deepest.Inputs(grid, A + B * grid)
    return deepest.Assimilation(
        _field,
        data,
        rm=1.0,
        dim=1,
        discretisation=discretisation,
        params={"k": K},
        inputs=inputs,
        **kwargs,
    )


def _solve_scheme(problem, x0):
    """The path with every model residual zero from x(0) = x0, interval by interval (the
    residuals are affine in the interval's unknowns: one Newton step is exact)."""
    scheme, ts = problem.discretisation, problem.ts
    theta = {"k": jnp.asarray(K)}
    midpoints = scheme.has_midpoints
    x = [jnp.asarray([x0])]
    for n in range(len(ts) - 1):

        def residual(v, n=n):
            path = jnp.stack([x[-1], v[:1]])
            mid = v[1:][None] if midpoints else None
            return jnp.concatenate(
                [
                    r.reshape(-1)
                    for r in scheme.residuals(problem.vector_field, ts[n : n + 2], path, theta, mid)
                ]
            )

        v = jnp.zeros(2 if midpoints else 1)
        v = v - jnp.linalg.solve(jax.jacfwd(residual)(v), residual(v))
        x.append(v[:1])
    return np.asarray(jnp.stack(x))[:, 0]


@pytest.mark.parametrize(
    "discretisation, order",
    [("euler", 1), ("trapezoid", 2), ("rk4", 4), ("simpson_hermite", 4), ("gauss_legendre", 4)],
)
def test_each_scheme_converges_at_its_order(discretisation, order):
    errors = []
    for h in (0.1, 0.05):
        problem = _problem(discretisation, h)
        path = _solve_scheme(problem, 2.0)
        errors.append(abs(path[-1] - _closed_form(1.0, 2.0)))
    assert np.log2(errors[0] / errors[1]) == pytest.approx(order, abs=0.25)


def test_the_model_sees_the_samples_at_grid_times():
    # a rough signal on the model's own grid (h = 0.1), as varanneal feeds its stimulus
    grid = np.linspace(0.0, 1.0, 11)
    samples = np.random.default_rng(0).normal(size=11)
    problem = _problem("trapezoid", 0.1, inputs=deepest.Inputs(grid, samples))
    path = np.random.default_rng(1).normal(size=(11, 1))
    u = {"path": jnp.asarray(path), "params": {}}
    (r,) = problem._model_residuals(u)
    f = -K * path[:, 0] + samples
    expected = path[1:, 0] - path[:-1, 0] - 0.05 * (f[:-1] + f[1:])
    np.testing.assert_allclose(np.asarray(r)[:, 0], expected, rtol=0, atol=1e-15)
    # Simpson–Hermite's midpoints fall between samples: the interpolant's values there
    mid = deepest.Inputs(grid, samples)(jnp.asarray(0.35))
    assert float(mid[0]) == pytest.approx((samples[3] + samples[4]) / 2, rel=1e-14)


def test_predict_continues_the_inputs():
    grid = np.linspace(0.0, 3.0, 61)
    signal = np.sin(2.0 * grid)
    inputs = deepest.Inputs(grid, signal, interpolation="cubic")
    problem = _problem("trapezoid", 0.05, inputs=inputs, estimate=("k",))
    path = jnp.asarray(_closed_form(np.asarray(problem.ts), 2.0))[:, None]
    u = {"path": path, "params": {"k": jnp.asarray(K)}}
    times, states = problem.forecast(u, 2.5, n_times=301)

    def field(t, x, args):
        return _field(t, x, {"k": K}, inputs(t))

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        1.0,
        2.5,
        0.01,
        path[-1],
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-12, jump_ts=grid),
        max_steps=100_000,
    )
    np.testing.assert_allclose(states, solution.ys, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=re.escape("the prediction")):
        problem.forecast(u, 3.5)


def test_a_driven_model_needs_inputs_and_uses_them():
    data = deepest.Observations(np.linspace(0, 1, 11), np.zeros((11, 1)), observed=[0])
    options = {"rm": 1.0, "dim": 1, "params": {"k": K}}
    with pytest.raises(ValueError, match="takes a driving input u"):
        deepest.Assimilation(_field, data, **options)
    inputs = deepest.Inputs(np.linspace(0, 1, 11), np.ones(11))
    with pytest.raises(ValueError, match="the model takes none"):
        deepest.Assimilation(lambda t, x, p: -p["k"] * x, data, inputs=inputs, **options)
    with pytest.raises(ValueError, match="ignores its input"):
        deepest.Assimilation(lambda t, x, p, u: -p["k"] * x, data, inputs=inputs, **options)
    short = deepest.Inputs(np.linspace(0, 0.8, 9), np.ones(9))
    with pytest.raises(ValueError, match="the window"):
        deepest.Assimilation(_field, data, inputs=short, **options)
    with pytest.raises(TypeError, match="must be a deepest.Inputs"):
        deepest.Assimilation(_field, data, inputs=np.ones(11), **options)
    with pytest.raises(ValueError, match="NaN|not finite"):
        deepest.Inputs(np.linspace(0, 1, 11), np.where(np.arange(11) == 4, np.nan, 1.0))


def test_a_driven_module_and_a_twin():
    class Leak(deepest.models.AbstractDrivenModel):
        k: float = K

        def __call__(self, t, x, u):
            return -self.k * x + u

    grid = np.linspace(-1.0, 3.0, 81)
    inputs = deepest.Inputs(grid, A + B * grid)
    data = deepest.twin_experiment(
        Leak(), 1, 21, 0.1, [0], 0.0, jr.key(0), x0=jnp.asarray([2.0]), spinup=0.0, inputs=inputs
    )
    np.testing.assert_allclose(
        data.truth[:, 0], _closed_form(np.asarray(data.times), 2.0), atol=1e-9
    )
    problem = deepest.Assimilation(Leak(k=1.0), data, rm=1.0, estimate=("k",), inputs=inputs)
    assert problem.vector_field(jnp.asarray(0.5), jnp.asarray([1.0]), {})[0] == pytest.approx(
        -1.0 + A + 0.5 * B
    )
    two = deepest.Inputs(grid, np.stack([grid, grid], axis=1))
    with pytest.raises(ValueError, match="takes 1 input signal"):
        deepest.Assimilation(Leak(), data, rm=1.0, inputs=two)


def test_the_nakl_config_runs_from_the_command_line(tmp_path):
    """`model.name: nakl`, a chaotic current made by the config, NaKL's own boxes: the
    shipped config at a tiny size, through `deepest anneal`, forecast with the current."""
    out = tmp_path / "nakl"
    sets = ["data.twin.n_times=101", "anneal.n_beta=4", "anneal.n_paths=2"]
    sets += ["output.forecast_horizon=10.0"]
    args = ["anneal", os.path.join(ROOT, "configs", "nakl.yaml"), "--out", str(out)]
    assert main([*args, "--no-progress", *[x for s in sets for x in ("--set", s)]]) == 0
    summary = (out / "summary.txt").read_text()
    assert "estimated gNa:" in summary and "forecast RMS error over 10 time units" in summary
    result = deepest.AnnealResult.load(out)
    assert set(result.params) == set(deepest.models.NaKL().parameter_names)
    low, high = deepest.models.NaKL.bounds["gNa"]
    assert np.all((result.params["gNa"] >= low) & (result.params["gNa"] <= high))
    gates = np.asarray(result.paths)[..., 1:]
    assert gates.min() >= 0.0 and gates.max() <= 1.0


def test_inputs_from_a_file_in_a_config(tmp_path):
    times = np.linspace(0.0, 3.0, 31)
    values = np.sin(times)
    csv = tmp_path / "stimulus.csv"
    csv.write_text("t,u\n" + "\n".join(f"{float(t)!r},{float(v)!r}" for t, v in zip(times, values)))
    config = deepest.experiments.load(
        os.path.join(ROOT, "configs", "nakl.yaml"),
        [
            "data.twin.n_times=101",
            "data.twin.dt=0.02",
            f"data.inputs={{file: {csv}, interpolation: cubic}}",
        ],
    )
    problem, _, data, _ = config.build()
    np.testing.assert_array_equal(np.asarray(problem.inputs.values)[:, 0], values)
    assert problem.inputs.interpolation == "cubic" and data.n_times == 101
    with pytest.raises(ValueError, match="takes one of `file` and `chaotic`"):
        deepest.experiments.load(
            os.path.join(ROOT, "configs", "nakl.yaml"), [f"data.inputs.file={csv}"]
        )
