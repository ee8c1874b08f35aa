"""Box constraints in L-BFGS (`problem.bounds()`), with and without the tridiagonal
preconditioner: the direction, restricted to the free unknowns, is a descent direction; a
minimum inside the box is reached from starts across it, its corners included; a minimum
outside stops on the bound with the KKT conditions satisfied, at the point scipy's
L-BFGS-B finds for the same action at the last β; every iterate stays inside the box."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.optimize

import deepest
from deepest.annealing import Block

SCHEDULE = deepest.AnnealSchedule(1.0, 2.0, 4)
RF = float(SCHEDULE.rf[-1])
FTOL, GTOL = 1e-15, 1e-10
N_PATHS = 6  # every anneal here runs this many paths: one compile per problem structure
# The anneals stop on a decrease of ftol·|A| ≈ 1e-16, which leaves a projected gradient of
# up to ~5e-8 of its size at the start (measured: the action's smallest curvature is
# ~0.1), and scipy's L-BFGS-B (factr·eps = 1e-16) ~2e-8: the points agree to ~3e-8 and the
# unknowns are O(1).
ATOL = 1e-6
KKT = 1e-7


SIZE = 8
COUPLING = np.eye(SIZE) + 0.4 * np.asarray(jr.normal(jr.key(3), (SIZE, SIZE))) / np.sqrt(SIZE)
OFFSET = np.asarray(jr.normal(jr.key(4), (SIZE,)))
CENTRE = np.linspace(-1.0, 1.5, SIZE)


class _Coupled(deepest.AbstractProblem):
    """Σ (x − c)² + R_f·(Σ (Mx − b)² + Σ x⁴/4), each term averaged, with M dense: a
    strictly convex problem without banded residuals (one minimum at every R_f, in the box
    or on its bounds), and the box (lower, upper)."""

    box: tuple[np.ndarray, np.ndarray]

    def init(self, key):
        return jr.uniform(key, (SIZE,), minval=-1.0, maxval=1.0)

    def residual_blocks(self):
        return (
            Block(lambda x: x - CENTRE, SIZE),
            Block(lambda x: (COUPLING @ x - OFFSET, x**2 / 2), SIZE, term="model"),
        )

    def bounds(self):
        return tuple(jnp.asarray(b) for b in self.box)

    @staticmethod
    def unflatten(z):
        return jnp.asarray(z)

    @staticmethod
    def flat(u):
        return np.asarray(u)


N_TIMES, DT = 10, 0.3
BANDED_SIZE = 2 * N_TIMES + 2


class _Oscillator(deepest.AbstractBandedProblem):
    """x_{n+1} = x_n + Δt·(x_n[1], −θ₀ x_n[0] − θ₁ x_n[1]), both components measured:
    banded residuals (N, 2) at the nodes and (N − 1, 2) on the intervals, with the
    stiffness and damping θ the parameters, and a box (lower, upper) in the flat layout
    (states, then θ)."""

    data: jax.Array
    box: tuple[np.ndarray, np.ndarray] | None = None

    def init(self, key):
        return self.unflatten(jr.uniform(key, (BANDED_SIZE,), minval=0.5, maxval=1.0))

    @staticmethod
    def unflatten(z):
        z = jnp.asarray(z)
        return {"x": z[:-2].reshape(N_TIMES, 2), "theta": z[-2:]}

    @staticmethod
    def flat(u):
        x, theta = np.asarray(u["x"]), np.asarray(u["theta"])
        return np.concatenate([x.reshape(x.shape[:-2] + (-1,)), theta], axis=-1)

    def _misfit(self, u):
        return u["x"] - self.data

    def _model(self, u):
        x, (stiffness, damping) = u["x"][:-1], u["theta"]
        rate = jnp.stack([x[:, 1], -stiffness * x[:, 0] - damping * x[:, 1]], axis=-1)
        return u["x"][1:] - x - DT * rate

    def residual_blocks(self):
        return (
            Block(self._misfit, 2 * N_TIMES, 1.0, layout="node"),
            Block(self._model, 2 * (N_TIMES - 1), term="model", layout="interval"),
        )

    @property
    def banded_shape(self):
        return (N_TIMES, 2, 2)

    def to_banded(self, u):
        return u["x"], u["theta"]

    def from_banded(self, states, params):
        return {"x": states, "theta": params}

    def bounds(self):
        return None if self.box is None else tuple(self.unflatten(b) for b in self.box)


def _data():
    x = [np.array([1.0, 0.0])]
    for _ in range(N_TIMES - 1):
        a = x[-1]
        x.append(a + DT * np.array([a[1], -1.3 * a[0] - 0.2 * a[1]]))
    return jnp.asarray(np.stack(x)) + 0.05 * jr.normal(jr.key(5), (N_TIMES, 2))


def _oscillator_box(x0=(-np.inf, np.inf), x1=(-np.inf, np.inf), theta=(-np.inf, np.inf)):
    """The flat (lower, upper) of a box per state component (the same at every time) and
    on both θ."""
    lower = np.concatenate([np.tile([x0[0], x1[0]], N_TIMES), [theta[0]] * 2])
    upper = np.concatenate([np.tile([x0[1], x1[1]], N_TIMES), [theta[1]] * 2])
    return lower, upper


def _value_and_grad(problem, rf=RF):
    return jax.jit(jax.value_and_grad(lambda z: problem.action(problem.unflatten(z), rf)))


def _gradient(problem):
    """z ↦ ∇A at the last β of the flat unknowns `z`, by `jax.grad` (one compile)."""
    fn = _value_and_grad(problem)
    return lambda z: np.asarray(fn(jnp.asarray(z))[1])


def _projected(z, grad, lower, upper):
    """The gradient less the entries at a bound that push out of the box: zero at a KKT
    point of the box."""
    blocked = ((z <= lower) & (grad > 0)) | ((z >= upper) & (grad < 0))
    return np.where(blocked, 0.0, grad)


def _scipy(problem, start, box):
    """scipy's L-BFGS-B on the same action at the last β, to the rounding of float64
    (`box` None: unbounded)."""
    fn = _value_and_grad(problem)
    solution = scipy.optimize.minimize(
        lambda z: tuple(np.asarray(a) for a in fn(jnp.asarray(z))),
        start,
        jac=True,
        method="L-BFGS-B",
        bounds=None if box is None else list(zip(*box)),
        options={"ftol": 1e-16, "gtol": 1e-12, "maxiter": 10_000, "maxcor": 20},
    )
    assert solution.success, solution.message
    return solution.x


def _anneal(problem, starts, minimiser):
    assert len(starts) == N_PATHS
    result = deepest.anneal(
        problem,
        SCHEDULE,
        N_PATHS,
        init=jax.vmap(problem.unflatten)(jnp.asarray(starts)),
        ftol=FTOL,
        gtol=GTOL,
        save_betas=range(SCHEDULE.n_beta),
        minimiser=minimiser,
        progress=False,
    )
    assert np.all(np.asarray(result.converged)), result.converged_by
    return result


def _starts(lower, upper, mixed, key):
    """Starts across a finite box: its lowest and highest corners, the two that mix them
    (`mixed` True entries low, the rest high, and the reverse), and uniform draws."""
    low_high = np.where(mixed, lower, upper)
    high_low = np.where(mixed, upper, lower)
    draws = jr.uniform(key, (N_PATHS - 4, len(lower)), minval=lower, maxval=upper)
    return np.concatenate([np.stack([lower, upper, low_high, high_low]), np.asarray(draws)])


def _minimisers():
    """The L-BFGS settings the anneals use: the default (preconditioned where the problem
    is banded), without the preconditioner, and carrying curvature across β."""
    return {
        "default": deepest.LBFGS(),
        "plain": deepest.LBFGS(precondition=False),
        "carry": deepest.LBFGS(carry_curvature=True),
    }


# --- the direction ---------------------------------------------------------------------


@pytest.mark.parametrize("precondition", [True, False], ids=["preconditioned", "plain"])
def test_each_step_stays_in_the_box_along_a_descent_direction(precondition):
    """The minimiser's own steps (the protocol `anneal` drives) on a box that cuts the
    minimum: every point in the box, the action never rising, `StepInfo.grad` the
    projected gradient of the action (`jax.grad`), and the direction from each accepted
    point zero on its active set, never out of the box, and a descent direction, gᵀd < 0;
    without the preconditioner, the first is −P(g)/‖P(g)‖ (scipy's first step)."""
    box = _oscillator_box(x0=(-0.8, np.inf), x1=(-0.6, 0.5), theta=(0.2, 0.6))
    problem = _Oscillator(_data(), box)
    lbfgs = deepest.LBFGS(precondition=precondition, memory_dtype=None)
    # in the minimiser's own layout (θ first without the preconditioner: ravel_pytree)
    lower, upper = (np.asarray(lbfgs.flatten(problem, b)) for b in problem.bounds())
    start = lbfgs.flatten(problem, problem.unflatten(np.clip(np.full(BANDED_SIZE, 0.55), *box)))
    shared = lbfgs.prepare(problem, start[None], jnp.asarray(SCHEDULE.rf), jnp.ones(4))
    np.testing.assert_array_equal(shared.bounds, (lower, upper))
    action = jax.jit(jax.grad(lambda y: problem.action(lbfgs.unflatten(problem, y), RF)))

    @jax.jit
    def run(y):
        def one(carry, loop_step):
            y, state = carry
            y, state, info = lbfgs.step(problem, y, RF, 0, loop_step, state, shared)
            return (y, state), (y, state.direction, info)

        state = lbfgs.init(problem, y, RF, shared)
        return jax.lax.scan(one, (y, state), jnp.arange(40))[1]

    points, directions, infos = jax.tree.map(np.asarray, run(start))
    scale = np.abs(action(start)).max()
    checked = held = 0
    for z, d, grad, accepted in zip(points, directions, infos.grad, infos.accepted):
        assert np.all((lower <= z) & (z <= upper))
        full = np.asarray(action(z))
        projected = _projected(z, full, lower, upper)
        np.testing.assert_allclose(grad, projected, rtol=0, atol=1e-12 * scale)
        if not accepted:
            continue
        active = projected != full
        assert np.all(d[active] == 0)
        assert not np.any(((z <= lower) & (d < 0)) | ((z >= upper) & (d > 0)))
        if np.abs(projected).max() > 1e-10 * scale:
            assert full @ d < 0
            checked += 1
            held += int(np.any(active))
    assert checked > 10 and held > 5  # bounds were active, with the gradient pushing out
    accepted = infos.action[infos.accepted]
    assert len(accepted) > 10 and np.all(np.diff(accepted) <= 0)
    if not precondition:
        g = _projected(np.asarray(start), np.asarray(action(start)), lower, upper)
        np.testing.assert_allclose(directions[0], -g / np.linalg.norm(g), rtol=1e-13, atol=1e-16)


# --- anneals ---------------------------------------------------------------------------

# The unconstrained minima at the last β: the coupled problem's lies in (−1.1, 0.9), the
# oscillator's has x0 in (−1.4, 1.1), x1 in (−1.4, 0.6) and θ ≈ (1.2, 0.1) (asserted
# below). These boxes hold them inside.
COUPLED_INSIDE = (np.full(SIZE, -1.5), np.full(SIZE, 1.5))
OSCILLATOR_INSIDE = _oscillator_box(x0=(-1.6, 1.3), x1=(-1.6, 0.8), theta=(-0.2, 1.5))


def _inside_cases():
    yield _Coupled(COUPLED_INSIDE), deepest.LBFGS(), np.zeros(SIZE)
    start = _Oscillator.flat({"x": _data(), "theta": np.ones(2)})
    for name in ("default", "plain"):
        minimiser = _minimisers()[name]
        yield _Oscillator(_data(), OSCILLATOR_INSIDE), minimiser, start


@pytest.mark.parametrize("case", range(3), ids=["coupled", "banded", "banded-plain"])
def test_a_minimum_inside_the_box_is_reached_from_starts_across_it(case):
    problem, minimiser, start = list(_inside_cases())[case]
    lower, upper = problem.box
    free = _scipy(problem, start, None)  # the action alone: unbounded
    margin = np.minimum(free - lower, upper - free)
    assert margin.min() > 0.05  # the unconstrained minimum lies inside
    mixed = np.arange(len(lower)) % 2 == 0
    starts = _starts(lower, upper, mixed, jr.key(case))
    result = _anneal(problem, starts, minimiser)
    assert np.asarray(result.iterations).max() <= 100  # at most 52 (measured)
    ends = problem.flat(result.unknowns)
    np.testing.assert_allclose(ends, np.broadcast_to(free, ends.shape), atol=ATOL)


OUTSIDE = {
    # x₀, x₃ ≥ −0.5 and x₂, x₄ ≤ 0.3: the minimum (−0.86, ·, 0.45, −1.08, 0.89, …) is cut
    "coupled": (
        np.array([-0.5, -1.5, -1.5, -0.5, -1.5, -1.5, -1.5, -1.5]),
        np.array([1.5, 1.5, 0.3, 1.5, 0.3, 1.5, 1.5, 1.5]),
    ),
    "states": _oscillator_box(x1=(-0.6, 0.5)),
    "parameters": _oscillator_box(theta=(0.2, 0.9)),
    "both": _oscillator_box(x0=(-0.8, np.inf), x1=(-0.6, 0.5), theta=(0.2, 0.6)),
}
OUTSIDE_CASES = [
    ("coupled", "default"),
    ("coupled", "carry"),
    ("states", "default"),
    ("parameters", "default"),
    ("both", "default"),
    ("both", "plain"),
]


@pytest.mark.parametrize(
    "box, minimiser", OUTSIDE_CASES, ids=[f"{b}-{m}" for b, m in OUTSIDE_CASES]
)
def test_a_minimum_outside_the_box_stops_on_its_bound(box, minimiser):
    lower, upper = OUTSIDE[box]
    if box == "coupled":
        problem = _Coupled((lower, upper))
        start = np.zeros(SIZE)
    else:
        problem = _Oscillator(_data(), (lower, upper))
        start = np.clip(_Oscillator.flat({"x": _data(), "theta": np.full(2, 0.5)}), lower, upper)
    minimiser = _minimisers()[minimiser]
    reference = _scipy(problem, start, (lower, upper))
    finite_lower = np.where(np.isfinite(lower), lower, -1.0)
    finite_upper = np.where(np.isfinite(upper), upper, 1.0)
    draws = jr.uniform(
        jr.key(2), (N_PATHS - 1, len(lower)), minval=finite_lower, maxval=finite_upper
    )
    starts = np.concatenate([start[None], np.asarray(draws)])
    result = _anneal(problem, starts, minimiser)
    # no linear crawl: at most 52 evaluations a (β, path) (measured); with the pairs' whole
    # gradient change instead of its free entries', ~410 at β = 2 for "both-default"
    assert np.asarray(result.iterations).max() <= 100
    ends = problem.flat(result.unknowns)
    np.testing.assert_allclose(ends, np.broadcast_to(reference, ends.shape), atol=ATOL)
    # every β's minimum in the box, exactly (the steps are projected, not clipped after)
    for saved in result.saved.values():
        z = problem.flat(saved)
        assert np.all((lower <= z) & (z <= upper))
    gradient = _gradient(problem)
    scale = np.abs(gradient(start)).max()
    on_reference = (reference == lower) | (reference == upper)
    for z in ends:
        grad = gradient(z)
        on_lower, on_upper = z == lower, z == upper
        # the minimum lies outside: bounds are active, exactly, with the gradient pushing
        # out, on the entries where scipy's L-BFGS-B stops on them too
        np.testing.assert_array_equal(on_lower | on_upper, on_reference)
        assert np.any(on_lower | on_upper)
        assert np.all(grad[on_lower] >= 0) and np.all(grad[on_upper] <= 0)
        assert np.abs(grad[on_lower | on_upper]).max() > 1e-3 * scale
        # KKT: what is left of the gradient off the active bounds is at the tolerance
        assert np.abs(_projected(z, grad, lower, upper)).max() <= KKT * scale
