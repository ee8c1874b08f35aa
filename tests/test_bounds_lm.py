"""Box constraints in Levenberg–Marquardt (`problem.bounds()`): a minimum inside the box is
reached from starts across it, on its bounds included; a minimum outside stops on the
bound with the KKT conditions satisfied, at the point scipy's bounded least squares finds
for the same residuals at the last β; every iterate stays inside the box."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.optimize

import deepest
from deepest.annealing import Block

N_TIMES, DT = 12, 0.3
SCHEDULE = deepest.AnnealSchedule(1.0, 2.0, 4)
RF = float(SCHEDULE.rf[-1])
FTOL, GTOL = 1e-13, 1e-10
SIZE = 2 * N_TIMES + 1
# scipy's 'trf' stops on the change of its cost (ftol = 1e-15 of ~0.2), up to 1e-8 from
# the minimum on these problems (whose smallest curvature is ~0.1); the unknowns are O(1).
SCIPY_ATOL = 1e-6


class _Oscillator(deepest.AbstractBandedProblem):
    """x_{n+1} = x_n + Δt·(x_n[1], −θ·x_n[0]), both components measured: banded residuals
    (N, 2) at the nodes and (N − 1, 2) on the intervals, with the stiffness θ the one
    parameter, and the box (lower, upper) given in the flat layout (states, then θ)."""

    data: jax.Array
    box: tuple[np.ndarray, np.ndarray] | None = None

    def init(self, key):
        return self.unflatten(jr.uniform(key, (SIZE,), minval=0.5, maxval=1.0))

    @staticmethod
    def unflatten(z):
        z = jnp.asarray(z)
        return {"x": z[:-1].reshape(N_TIMES, 2), "theta": z[-1]}

    def _misfit(self, u):
        return u["x"] - self.data

    def _model(self, u):
        x, theta = u["x"][:-1], u["theta"]
        return u["x"][1:] - x - DT * jnp.stack([x[:, 1], -theta * x[:, 0]], axis=-1)

    def residual_blocks(self):
        return (
            Block(self._misfit, 2 * N_TIMES, 1.0, layout="node"),
            Block(self._model, 2 * (N_TIMES - 1), term="model", layout="interval"),
        )

    @property
    def banded_shape(self):
        return (N_TIMES, 2, 1)

    def to_banded(self, u):
        return u["x"], u["theta"][None]

    def from_banded(self, states, params):
        return {"x": states, "theta": params[0]}

    def bounds(self):
        return None if self.box is None else tuple(self.unflatten(b) for b in self.box)


def _data():
    x = [np.array([1.0, 0.0])]
    for _ in range(N_TIMES - 1):
        a = x[-1]
        x.append(a + DT * np.array([a[1], -1.3 * a[0]]))
    return jnp.asarray(np.stack(x)) + 0.05 * jr.normal(jr.key(5), (N_TIMES, 2))


def _box(x0=(-np.inf, np.inf), x1=(-np.inf, np.inf), theta=(-np.inf, np.inf)):
    """The flat (lower, upper) of a box per state component (the same at every time) and
    on θ."""
    lower = np.concatenate([np.tile([x0[0], x1[0]], N_TIMES), [theta[0]]])
    upper = np.concatenate([np.tile([x0[1], x1[1]], N_TIMES), [theta[1]]])
    return lower, upper


def _flat(u):
    x, theta = np.asarray(u["x"]), np.asarray(u["theta"])
    return np.concatenate([x.reshape(x.shape[:-2] + (-1,)), theta[..., None]], axis=-1)


def _anneal(problem, starts):
    init = jax.vmap(problem.unflatten)(jnp.asarray(starts))
    result = deepest.anneal(
        problem,
        SCHEDULE,
        len(starts),
        init=init,
        ftol=FTOL,
        gtol=GTOL,
        save_betas=range(SCHEDULE.n_beta),
        minimiser=deepest.LevenbergMarquardt(),
        progress=False,
    )
    assert np.all(np.asarray(result.converged)), result.converged_by
    return result


def _gradient(problem, z):
    """∇A at the last β of the flat unknowns `z`, by `jax.grad`."""
    return np.asarray(jax.grad(lambda z: problem.action(problem.unflatten(z), RF))(z))


def _projected(z, grad, lower, upper):
    """The gradient less the entries at a bound that push out of the box: zero at a KKT
    point of the box."""
    blocked = ((z <= lower) & (grad > 0)) | ((z >= upper) & (grad < 0))
    return np.where(blocked, 0.0, grad)


def _scipy(problem, start):
    """scipy's bounded least squares (the interior, reflective 'trf', an algorithm other
    than this one) on the same residuals at the last β, at its tightest tolerances."""

    def residuals(z):
        node, interval = problem.banded_residuals(z[:-1].reshape(N_TIMES, 2), z[-1:], RF)
        return jnp.concatenate([node.reshape(-1), interval.reshape(-1)])

    fun, jac = jax.jit(residuals), jax.jit(jax.jacfwd(residuals))
    box = (-np.inf, np.inf) if problem.box is None else problem.box
    solution = scipy.optimize.least_squares(
        lambda z: np.asarray(fun(z)),
        start,
        jac=lambda z: np.asarray(jac(z)),
        bounds=box,
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    assert solution.success, solution.message
    return solution.x


def _corners(lower, upper, n_random, key):
    """Starts across a finite box: its lowest and highest corners, the two that mix them
    (states low, θ high and the reverse), and uniform draws."""
    low_high = np.where(np.arange(SIZE) < SIZE - 1, lower, upper)
    high_low = np.where(np.arange(SIZE) < SIZE - 1, upper, lower)
    draws = np.asarray(jr.uniform(key, (n_random, SIZE), minval=lower, maxval=upper))
    return np.concatenate([np.stack([lower, upper, low_high, high_low]), draws])


# The unconstrained minimum at the last β has x0 in (−1.78, 1.03), x1 in (−1.51, 0.95)
# and θ ≈ 1.25 (asserted below): these boxes hold it inside.
INSIDE = [
    _box(x0=(-1.9, 1.1), x1=(-1.6, 1.0), theta=(1.0, 1.5)),
    _box(),  # bounds everywhere infinite: a box that binds nothing
]


@pytest.mark.parametrize("box", INSIDE, ids=["finite", "infinite"])
def test_a_minimum_inside_the_box_is_reached_from_starts_across_it(box):
    data = _data()
    lower, upper = box
    free_minimum = _scipy(_Oscillator(data), _flat({"x": data, "theta": 1.0}))
    assert np.all((lower < free_minimum - 0.04) & (free_minimum + 0.04 < upper))
    finite_lower = np.where(np.isfinite(lower), lower, -1.5)
    finite_upper = np.where(np.isfinite(upper), upper, 1.5)
    starts = _corners(finite_lower, finite_upper, 4, jr.key(1))
    result = _anneal(_Oscillator(data, box), starts)
    ends = _flat(result.unknowns)
    np.testing.assert_allclose(ends, np.broadcast_to(free_minimum, ends.shape), atol=SCIPY_ATOL)


# Boxes that cut the unconstrained minimum: the states' second component (the minimum
# has x1 down to −1.5 and up to 0.95), θ (the minimum has θ ≈ 1.25), and both.
OUTSIDE = {
    "states": _box(x1=(-0.6, 0.5)),
    "parameter": _box(theta=(0.2, 0.9)),
    "both": _box(x0=(-0.8, np.inf), x1=(-0.6, 0.5), theta=(0.2, 0.6)),
}


@pytest.mark.parametrize("name", OUTSIDE)
def test_a_minimum_outside_the_box_stops_on_its_bound(name):
    data = _data()
    lower, upper = OUTSIDE[name]
    problem = _Oscillator(data, (lower, upper))
    start = np.clip(_flat({"x": data, "theta": 0.5}), lower, upper)
    reference = _scipy(problem, start)
    starts = np.stack([start, np.clip(np.full(SIZE, 0.3), lower, upper)])
    result = _anneal(problem, starts)
    ends = _flat(result.unknowns)
    np.testing.assert_allclose(ends, np.broadcast_to(reference, ends.shape), atol=SCIPY_ATOL)
    # every β's minimum in the box, exactly (the steps are projected, not clipped after)
    for saved in result.saved.values():
        z = _flat(saved)
        assert np.all((lower <= z) & (z <= upper))
    scale = np.abs(_gradient(problem, start)).max()
    for z in ends:
        grad = _gradient(problem, z)
        on_lower, on_upper = z == lower, z == upper
        # the minimum lies outside: bounds are active, with the gradient pushing out
        assert np.any(on_lower | on_upper)
        assert np.all(grad[on_lower] >= 0) and np.all(grad[on_upper] <= 0)
        assert np.abs(grad[on_lower | on_upper]).max() > 1e-3 * scale
        # KKT: what is left of the gradient off the active bounds is at the tolerance
        assert np.abs(_projected(z, grad, lower, upper)).max() <= 1e-8 * scale
        # scipy ends within rounding of the same bounds ('trf' stays strictly inside)
        np.testing.assert_allclose(reference[on_lower], lower[on_lower], atol=1e-9)
        np.testing.assert_allclose(reference[on_upper], upper[on_upper], atol=1e-9)
    if name != "states":
        assert np.all(ends[:, -1] == upper[-1])  # θ stops on its upper bound


STEP_CASES = {
    # the box that cuts θ and both state components, from inside it
    "both": (0.0, OUTSIDE["both"], 0.3),
    # data far above x1 ≤ 0.1 and a start far below it: the first steps are clipped from
    # afar, where y + (0.1 − y) rounds past 0.1 (for y = −1.3, to 0.1 + 8e-17)
    "far": (5.0, _box(x1=(-3.0, 0.1)), -1.3),
}


@pytest.mark.parametrize("name", STEP_CASES)
def test_each_step_stays_in_the_box_and_reports_the_projected_gradient(name):
    """The minimiser's own steps (the protocol `anneal` drives): every point in the box,
    exactly, the action never rising, and `StepInfo.grad` the projected gradient of the
    action (`jax.grad`), which is what the annealing loop's gradient rule reads."""
    shift, (lower, upper), value = STEP_CASES[name]
    problem = _Oscillator(_data() + shift, (lower, upper))
    lm = deepest.LevenbergMarquardt()
    start = jnp.asarray(np.clip(np.full(SIZE, value), lower, upper))
    shared = lm.prepare(problem, start[None], jnp.asarray(SCHEDULE.rf), jnp.ones(SCHEDULE.n_beta))
    arrays, static = eqx.partition(lm.init(problem, start, RF, shared), eqx.is_array)

    @jax.jit
    def run(y, arrays):
        def one(carry, _):
            y, arrays = carry
            y, state, info = lm.step(problem, y, RF, 0, 0, eqx.combine(arrays, static), shared)
            return (y, eqx.filter(state, eqx.is_array)), (y, info)

        return jax.lax.scan(one, (y, arrays), length=20)[1]

    points, infos = run(start, arrays)
    scale = np.abs(_gradient(problem, np.asarray(start))).max()
    grads, actions = np.asarray(infos.grad), np.asarray(infos.action)
    blocked = 0
    for z, grad, action in zip(np.asarray(points), grads, actions):
        assert np.all((lower <= z) & (z <= upper))
        full = _gradient(problem, z)
        projected = _projected(z, full, lower, upper)
        np.testing.assert_allclose(grad, projected, rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(action, problem.action(problem.unflatten(z), RF))
        blocked += int(np.any(projected != full))
    assert blocked > 0  # bounds were active, with the gradient pushing out
    accepted = actions[np.asarray(infos.accepted)]
    assert len(accepted) > 3 and np.all(np.diff(accepted) <= 0)
