"""`deepest.cycle`: on a linear model with Gaussian noise, cycled windows with the Laplace
background are the Kalman filter (analysis means and covariances, forecasts) and the
Rauch–Tung–Striebel smoother (means and standard deviations given the data up to each
window's end), the estimated parameter carried as an augmented state; DAPPER's statistics;
bad input refused before compute; a failing window stops the cycle with the finished ones
published, and a resume finishes it exactly as an unbroken run."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest

D, OBSERVED, N_OBS, DT, SPO, RM = 3, (0, 2), 11, 0.2, 2, 4.0
A = np.array([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.0, -0.3, -0.2]])
C = np.array([0.3, -0.2, 0.1])  # a constant forcing, estimated
SCHEDULE = deepest.AnnealSchedule(10.0, 10.0, 3)
M0 = np.array([0.8, 0.2, 0.4, 0.2, -0.1, 0.0])  # the background of (x₀, c)
P0 = np.diag([0.3, 0.5, 0.2, 0.1, 0.1, 0.1]) + 0.02


def _field(t, x, params):
    return jnp.asarray(A) @ x + params["c"]


def _data():
    rng = np.random.default_rng(0)
    h = DT / SPO
    x, truth = np.array([1.0, 0.0, 0.5]), []
    for _ in range(N_OBS):
        truth.append(x)
        for _ in range(SPO):
            x = x + h * (A @ x + C) + 0.05 * rng.normal(size=D)
    truth = np.array(truth)
    values = truth[:, list(OBSERVED)] + rng.normal(size=(N_OBS, len(OBSERVED))) / np.sqrt(RM)
    return deepest.Observations(np.arange(N_OBS) * DT, values, OBSERVED, truth=truth)


def _cycle(window, shift, field=_field, data=None, n_paths=2, **kwargs):
    return deepest.cycle(
        field,
        _data() if data is None else data,
        window=window,
        shift=shift,
        rm=RM,
        key=jr.key(0),
        discretisation="euler",
        steps_per_obs=SPO,
        schedule=SCHEDULE,
        warm=1,
        n_paths=n_paths,
        params={"c": C},
        estimate=("c",),
        background=deepest.Background(M0, cov=P0),
        progress=False,
        **kwargs,
    )


def _transition(window):
    """One grid step of z = (x, c) (Euler) and its noise: the action's model error, of
    precision λ = R_f·n_m/n_f per step on x (n_m of a window with all its data)."""
    h = DT / SPO
    step = np.block([[np.eye(D) + h * A, h * np.eye(D)], [np.zeros((D, D)), np.eye(D)]])
    lam = SCHEDULE.rf[-1] * window * len(OBSERVED) / (D * window * SPO)
    return step, np.diag(np.r_[np.full(D, 1 / lam), np.zeros(D)])


def _kalman(values, n_data: int, window: int, skip=()):
    """The Kalman filter of the augmented state z = (x, c) on the model grid (Euler, model
    error of precision λ = R_f·n_m/n_f per step on x, none on c), data up to `n_data`:
    forecasts and analyses at the observation times; then the RTS smoother."""
    step, q = _transition(window)
    obs = np.eye(2 * D)[list(OBSERVED)]
    m, p = M0.copy(), P0.copy()
    fm, fp, am, ap = [], [], [], []
    for j in range(N_OBS):
        if j:
            for _ in range(SPO):
                m, p = step @ m, step @ p @ step.T + q
        fm.append(m)
        fp.append(p)
        if j < n_data and j not in skip:
            gain = p @ obs.T @ np.linalg.inv(obs @ p @ obs.T + np.eye(2) / RM)
            m, p = m + gain @ (values[j] - obs @ m), (np.eye(2 * D) - gain @ obs) @ p
        am.append(m)
        ap.append(p)
    sm, sp = np.array(am), np.array(ap)
    for j in range(N_OBS - 2, -1, -1):
        # transition over the SPO grid steps between observation times
        big = np.linalg.matrix_power(step, SPO)
        noise = sum(
            np.linalg.matrix_power(step, k) @ q @ np.linalg.matrix_power(step, k).T
            for k in range(SPO)
        )
        pf = big @ ap[j] @ big.T + noise
        gain = ap[j] @ big.T @ np.linalg.inv(pf)
        sm[j] = am[j] + gain @ (sm[j + 1] - big @ am[j])
        sp[j] = ap[j] + gain @ (sp[j + 1] - pf) @ gain.T
    return np.array(fm), np.array(fp), np.array(am), np.array(ap), sm, sp


def _std(cov):
    return np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))[..., :D]


@pytest.mark.parametrize("later", ["gauss_newton", "anneal"])
@pytest.mark.parametrize("window, shift, carry", [(3, 1, "filter"), (2, 2, "smoother")])
def test_linear_gaussian_is_kalman_and_rts(window, shift, carry, later):
    result = _cycle(window, shift, carry=carry, later=later)
    # the later windows (their background carried): one compiled path each, or every
    # path annealed
    later_ones = result.window_starts > 0 if carry == "filter" else np.arange(result.n_windows) > 0
    run = np.isfinite(result.action[later_ones, -1])
    assert run[:, 0].all() and run[:, 1:].all() == (later == "anneal")
    values = np.asarray(_data().values)
    fm, fp, am, ap, _, _ = _kalman(values, N_OBS, window)
    assert result.stopped is None and not result.partial
    ends = result.window_ends
    np.testing.assert_array_equal(ends, np.arange(shift, N_OBS, shift))
    tol = dict(rtol=1e-8, atol=1e-10)
    # the filter analysis at each window's end, its covariance with the parameter
    np.testing.assert_allclose(result.analysis[ends], am[ends, :D], **tol)
    np.testing.assert_allclose(result.analysis_cov[ends], ap[ends], **tol)
    np.testing.assert_allclose(result.params, am[ends, D:], **tol)
    np.testing.assert_allclose(
        result.params_std, np.sqrt(np.diagonal(ap[ends][:, D:, D:], axis1=1, axis2=2)), **tol
    )
    # the forecast from the previous analysis (none before the first window's end)
    made = np.isfinite(result.forecast[:, 0])
    np.testing.assert_array_equal(np.flatnonzero(made), np.arange(shift + 1, N_OBS))
    step, q = _transition(window)
    for j in np.flatnonzero(made):  # from the last analysis before j, (j − p)·SPO steps on
        p = max(e for e in ends if e < j)
        m, cov = am[p], ap[p]
        for _ in range((j - p) * SPO):
            m, cov = step @ m, step @ cov @ step.T + q
        if j - p == 1:  # one interval on: the Kalman filter's own forecast
            np.testing.assert_allclose(m, fm[j], **tol)
        np.testing.assert_allclose(result.forecast[j], m[:D], **tol)
        np.testing.assert_allclose(result.forecast_std[j], _std(cov), **tol)
    # smoothed: the RTS smoother given the data up to the end of the last window holding t
    for i in range(N_OBS):
        end = max(e for s, e in zip(result.window_starts, ends) if s <= i <= e)
        _, _, _, _, sm, sp = _kalman(values, end + 1, window)
        np.testing.assert_allclose(result.smoothed[i], sm[i, :D], **tol)
        np.testing.assert_allclose(result.smoothed_std[i], _std(sp[i]), **tol)
    # DAPPER's statistics, by their definitions
    truth = np.asarray(_data().truth)
    keep = result.times > result.times[0] + 0.5
    errors = np.sqrt(np.mean((result.smoothed - truth) ** 2, axis=1))
    assert result.rmse(truth, burn_in=0.5)["smoothed"] == pytest.approx(np.mean(errors[keep]))
    spread = np.sqrt(np.mean(result.analysis_std**2, axis=1))
    assert result.spread(burn_in=0.5)["analysis"] == pytest.approx(
        np.nanmean(spread[keep]), rel=1e-12
    )


def test_gauss_newton_windows_with_midpoint_unknowns_equal_annealed_ones():
    """Simpson–Hermite (midpoints unknowns; the banded layout's last midpoint slot is
    padding): the compiled windows run (one path each) and, the problem being linear, give
    the annealed windows' Gaussians."""
    kwargs = dict(
        window=2,
        rm=RM,
        key=jr.key(0),
        discretisation="simpson_hermite",
        steps_per_obs=SPO,
        schedule=SCHEDULE,
        warm=1,
        n_paths=2,
        params={"c": C},
        estimate=("c",),
        background=deepest.Background(M0, cov=P0),
        progress=False,
    )
    fast = deepest.cycle(_field, _data(), later="gauss_newton", **kwargs)
    annealed = deepest.cycle(_field, _data(), later="anneal", **kwargs)
    assert not np.isfinite(fast.action[1:, -1, 1:]).any()  # every later window compiled
    ends = fast.window_ends
    for name in ("analysis", "analysis_cov"):
        a, b = getattr(fast, name)[ends], getattr(annealed, name)[ends]
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fast.smoothed_std, annealed.smoothed_std, rtol=1e-7)


def test_a_gauss_newton_window_that_does_not_converge_is_annealed(monkeypatch):
    """Every compiled window refused (its last step 'too large'): each falls back to the
    annealer (all its paths run), and the cycle is still the Kalman filter's."""
    import deepest._cycling._gauss_newton as module

    monkeypatch.setattr(module, "TOLERANCE", -1.0)
    result = _cycle(3, 1, carry="filter")
    assert np.isfinite(result.action[:, -1]).all()  # every path of every window ran
    _, _, am, ap, _, _ = _kalman(np.asarray(_data().values), N_OBS, 3)
    ends = result.window_ends
    np.testing.assert_allclose(result.analysis[ends], am[ends, :D], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.analysis_cov[ends], ap[ends], rtol=1e-8, atol=1e-10)


def test_the_compiled_windows_see_the_time_only_where_the_model_reads_it():
    """A field of x alone gets one constant grid for every compiled window (faster); one
    that reads t, or inputs u(t), each window's own times."""
    from deepest._cycling._gauss_newton import reads_time

    def problem(field, **kwargs):
        return deepest.Assimilation(
            field, _data(), rm=RM, params={"c": C}, estimate=("c",), **kwargs
        )

    assert not reads_time(problem(_field))
    assert reads_time(problem(_failing))
    inputs = deepest.Inputs(np.arange(N_OBS) * DT, np.zeros((N_OBS, 1)))
    driven = problem(lambda t, x, params, u: _field(t, x, params) + u[0], inputs=inputs)
    assert reads_time(driven)


def test_a_window_without_data_carries_its_background():
    # times 3 and 4 unmeasured: the window ending at 4 is the Kalman filter's predict step
    data = _data()
    mask = np.ones(data.values.shape, bool)
    mask[[3, 4]] = False
    data = deepest.Observations(data.times, data.values, OBSERVED, truth=data.truth, mask=mask)
    result = _cycle(2, 2, data=data)
    assert result.stopped is None and result.best[1] == -1
    _, _, am, ap, _, _ = _kalman(np.asarray(data.values), N_OBS, 2, skip=(3, 4))
    ends = result.window_ends
    np.testing.assert_allclose(result.analysis[ends], am[ends, :D], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.analysis_cov[ends], ap[ends], rtol=1e-8, atol=1e-10)


def test_smoother_windows_need_not_tile():
    # shift 2 in windows of 3: each window starts inside the last one
    result = _cycle(3, 2)
    np.testing.assert_array_equal(result.window_starts, [0, 1, 3, 5, 7])
    assert result.stopped is None and np.all(np.isfinite(result.analysis[result.window_ends]))


def _failing(t, x, params):  # non-finite after t = 1.05
    return jnp.asarray(A) @ x + params["c"] + jnp.where(t > 1.05, jnp.nan, 0.0)


def test_a_failing_window_stops_the_cycle_and_a_resume_finishes_it(tmp_path):
    whole = _cycle(2, 1)
    broken = _cycle(2, 1, field=_failing, checkpoint=tmp_path)
    assert broken.partial and "non-finite" in broken.stopped
    assert broken.n_windows == 5  # windows ending at 1…5; the one ending at 6 reaches t > 1.05
    # (to rounding: a field that reads t gets each window's own times, one that does not
    # the first window's, the same grid shifted)
    np.testing.assert_allclose(broken.analysis[:6], whole.analysis[:6], rtol=1e-12)
    assert np.all(np.isnan(broken.analysis[6:]))
    saved = deepest.CycleResult.load(tmp_path)
    assert saved.partial and saved.n_windows == 5
    resumed = _cycle(2, 1, resume=tmp_path)  # its first windows the failing field's
    assert not resumed.partial and resumed.stopped is None
    for name in ("forecast", "analysis", "analysis_cov", "smoothed", "smoothed_std", "params"):
        np.testing.assert_allclose(getattr(resumed, name), getattr(whole, name), rtol=1e-11)
    # a checkpoint of another run is refused, naming what differs
    with pytest.raises(ValueError, match="window"):
        _cycle(3, 1, resume=tmp_path)


@pytest.mark.parametrize("later", ["anneal", "gauss_newton"])
def test_ctrl_c_while_a_window_is_recorded_keeps_it_whole(tmp_path, monkeypatch, later):
    """A Ctrl-C that lands while a window's estimates are written (here: two SIGINTs sent
    as the third window's record begins, inside its writing) leaves that window recorded
    whole: annealed windows, the result stops there, marked partial, every row up to its end
    filled and none after, and a resume from the checkpoint ends as an unbroken run;
    Gauss–Newton windows, every window of the compiled call it lands in is recorded first
    (here all the later ones: the run ends complete)."""
    import os
    import signal

    import deepest._cycling._cycle as module

    whole = _cycle(2, 1, later=later)
    original, calls = module._State._record, []

    def interrupting(self, *args):
        calls.append(None)
        if len(calls) == 3:  # the third window's record: Ctrl-C pressed twice
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(module._State, "_record", interrupting)
    broken = _cycle(2, 1, checkpoint=tmp_path, later=later)
    monkeypatch.setattr(module._State, "_record", original)
    names = ("forecast", "analysis", "analysis_cov", "smoothed", "smoothed_std", "params")
    if later == "gauss_newton":
        assert not broken.partial and broken.stopped is None
        for name in names:
            np.testing.assert_array_equal(getattr(broken, name), getattr(whole, name))
        return
    assert broken.partial and broken.stopped == "interrupted"
    assert broken.n_windows == 3 and broken.action.shape[0] == 3
    assert np.all(broken.seconds > 0)  # the window recorded under the Ctrl-C has its time
    end = int(broken.window_ends[-1])
    np.testing.assert_array_equal(broken.analysis[: end + 1], whole.analysis[: end + 1])
    # (smoothed rows are refined by later windows: the whole run's differ)
    assert np.all(np.isfinite(broken.smoothed[: end + 1]))
    for name in ("analysis", "smoothed", "forecast"):
        assert np.all(np.isnan(getattr(broken, name)[end + 1 :])), name
    resumed = _cycle(2, 1, resume=tmp_path, later=later)
    assert not resumed.partial
    for name in names:
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))


def test_a_cycle_too_large_for_the_memory_is_refused_unless_told_to_try(monkeypatch):
    # a billion paths: the first window's annealing refuses before anything is allocated
    with pytest.raises(ValueError, match="1,000,000,000 paths"):
        _cycle(2, 1, n_paths=10**9)
    # check_memory=False (the command line's --force) reaches that annealing
    import deepest._cycling._cycle as module

    seen = []

    def anneal(*args, **kwargs):
        seen.append(kwargs["check_memory"])
        raise RuntimeError("stopped here")

    monkeypatch.setattr(module, "anneal", anneal)
    monkeypatch.setattr(module, "_starts", lambda *args: None)  # no billion draws
    with pytest.raises(RuntimeError, match="stopped here"):
        _cycle(2, 1, n_paths=10**9, check_memory=False)
    assert seen == [False]


def test_save_and_load(tmp_path):
    result = _cycle(2, 2)
    result.save(tmp_path)
    back = deepest.CycleResult.load(tmp_path)
    np.testing.assert_array_equal(back.analysis_cov, result.analysis_cov)
    np.testing.assert_array_equal(back.parameters["c"], result.params)
    assert back.settings == result.settings


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(window=0), "`window` must be a positive integer"),
        (dict(window=N_OBS), "longer than the data"),
        (dict(window=3, shift=2, carry="filter"), "`shift` must divide `window`"),
        (dict(window=2, shift=3), "`shift` must be at most `window`"),
        (dict(window=2, carry="kalman"), "`carry` must be"),
        (dict(window=2, shift=0), "`shift` must be a positive integer"),
        (dict(window=2, inflation=0.0), "`inflation` must be positive"),
        (dict(window=2, model_error=np.ones(2)), "`model_error` must be"),
        (dict(window=2, model_error=-np.eye(D)), "positive semidefinite"),
        (dict(window=2, warm=4), "`warm` must be"),
        (dict(window=2, later="newton"), "`later` must be"),
        (dict(window=2, iterations=0), "`iterations` must be a positive integer"),
        (
            dict(window=2, background=deepest.Background(np.zeros(2), diag=np.ones(2))),
            "`background`",
        ),
    ],
)
def test_bad_input_is_refused_before_compute(kwargs, match):
    settings = dict(
        window=2,
        rm=RM,
        key=jr.key(0),
        discretisation="euler",
        schedule=SCHEDULE,
        params={"c": C},
        estimate=("c",),
        progress=False,
    )
    settings.update(kwargs)
    with pytest.raises(ValueError, match=match):
        deepest.cycle(_field, _data(), **settings)


def test_background_covariance_checked():
    with pytest.raises(ValueError, match="positive definite"):
        deepest.Background(np.zeros(2), cov=np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        deepest.Background(np.zeros(2), cov=np.eye(3))


def test_inputs_must_cover_the_whole_cycle():
    inputs = deepest.Inputs(np.linspace(0.0, 1.0, 11), np.zeros((11, 1)))
    with pytest.raises(ValueError, match="the cycle needs"):
        deepest.cycle(
            lambda t, x, params, u: jnp.asarray(A) @ x + u[0],
            _data(),
            window=2,
            rm=RM,
            key=jr.key(0),
            dim=D,
            inputs=inputs,
            progress=False,
        )
