"""The later windows of a cycle as one compiled program: each window a few Gauss–Newton
iterations from the forecast and its Gauss–Newton Laplace Gaussian (an iterated extended
Kalman smoother step), a chunk of consecutive windows per call (`lax.scan`).

Annealing many paths per window (`_cycle._Cycler.window`) finds the consistent minimum
where the forecast is far from it; once the cycle has locked on, the forecast lies in
that minimum's basin and Gauss–Newton from it reaches it in one or two iterations, for a
fraction of the cost (benchmarks/bench_dapper.py). A window whose last step is not small
(over `TOLERANCE` posterior standard deviations in some unknown), that turns non-finite
or gives no positive definite curvature is left to the annealer: the chunk stops there."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._annealing import banded_normal_equations
from .._assimilation import Background
from .._uncertainty._laplace import _Jacobian
from .._uncertainty._selected_inversion import selected_inversion_and_solve, solve_eliminated
from ._forecast import forecast, run_model

# The last (polishing) step, in posterior standard deviations, beyond which a window is
# annealed instead. Measured on DAPPER's Lorenz-96 (benchmarks/bench_dapper.py, two
# iterations): at most 1.0 with every component observed every 0.05, up to 12 (99% below
# 5.3) with observations every 0.2, where the estimates still match the annealed ones; a
# window that lost the truth steps much further.
TOLERANCE = 20.0
CHUNK = 32  # windows per compiled call (the last one padded): one compiled program


class Carry(eqx.Module):
    """What a window hands the next: the background of the next window (smoother: the
    estimate at its start; filter: the analyses of the last `window/shift` windows, a ring),
    the last analysis (for the forecast statistics) and the last estimate (its path, to
    start the next window from)."""

    z: Float[Array, " n"]
    cov: Float[Array, "n n"]
    ring_z: Float[Array, "c n"]
    ring_cov: Float[Array, "c n n"]
    analysis_z: Float[Array, " n"]
    analysis_cov: Float[Array, "n n"]
    states: Float[Array, "N w"]  # the last estimate in the banded layout
    start: Int[Array, ""]  # its window's first observation time
    ok: Bool[Array, ""]


class Program(eqx.Module):
    """What every window of the compiled program shares: the later windows' problem, the
    whole run's data and windows, the carrying settings (arrays traced, the rest static)."""

    template: eqx.Module  # the later windows' problem (placeholder data and background)
    times: Float[Array, " n_obs"]
    values: Float[Array, "n_obs m"]
    mask: Bool[Array, "n_obs m"]
    starts: Int[Array, " n_windows"]
    ends: Int[Array, " n_windows"]
    eligible: Bool[Array, " n_windows"]  # windows this program may run
    rf: Float[Array, "..."]  # R_f at the schedule's last β (before the per-window scaling)
    n_ref: int = eqx.field(static=True)
    inflation: float = eqx.field(static=True)
    added: Float[Array, "d d"]
    precision: Float[Array, ""]
    window: int = eqx.field(static=True)
    shift: int = eqx.field(static=True)
    filter: bool = eqx.field(static=True)
    iterations: int = eqx.field(static=True)
    tolerance: float = eqx.field(static=True)  # `TOLERANCE` when built
    # the first window's times, for every window, where the model does not read t
    grid: tuple[float, ...] | None = eqx.field(static=True, default=None)

    def problem(self, carry: Carry, k):
        """Window k's problem: its data (masked as `_Cycler.problem` masks them) and its
        background, and the count of its measured entries."""
        a, e = self.starts[k], self.ends[k]
        w = self.window
        rows = a + jnp.arange(w + 1)
        keep = jax.lax.dynamic_slice_in_dim(self.mask, a, w + 1)
        if self.filter:
            keep = keep & (rows > a)[:, None]
        else:
            keep = keep & (rows > e - self.shift)[:, None]
        keep = keep & (rows <= e)[:, None]
        if self.grid is None:
            times = jax.lax.dynamic_slice_in_dim(self.times, a, w + 1)
        else:  # a constant grid: XLA:CPU runs the residuals ~1.8x faster than a traced one
            times = jnp.asarray(self.grid, self.times.dtype)
        values = jax.lax.dynamic_slice_in_dim(self.values, a, w + 1)
        if self.filter:
            z, cov = carry.ring_z[k % len(carry.ring_z)], carry.ring_cov[k % len(carry.ring_z)]
        else:
            z, cov = carry.z, carry.cov
        d = self.added.shape[0]
        cov = (self.inflation * cov).at[:d, :d].add(self.added)
        problem = eqx.tree_at(
            lambda q: (q.data.times, q.data.values, q.data.mask, q.background),
            self.template,
            (times, values, keep, Background(z, cov=cov)),
        )
        return problem, jnp.sum(keep, dtype=self.rf.dtype), z

    def first_guess(self, problem, carry: Carry, k, z):
        """The forecast path (the last estimate on the times the windows share, continued
        by the model) and the background's θ, in the banded layout."""
        spo, d = problem.steps_per_obs, problem.dim
        last = problem.from_banded(carry.states, z[d:])
        x_end = jnp.concatenate([last["path"][-1], z[d:]])
        t_end = self.times[carry.start + self.window]  # the last estimate's last time
        path, mids = run_model(problem, t_end, x_end, self.shift * spo)
        moved = (self.starts[k] - carry.start) * spo
        out = dict(last)
        out["path"] = jax.lax.dynamic_slice_in_dim(
            jnp.concatenate([last["path"], path[1:]]), moved, problem.n_model
        )
        if mids is not None:
            out["midpoints"] = jax.lax.dynamic_slice_in_dim(
                jnp.concatenate([last["midpoints"], mids]), moved, problem.n_model - 1
            )
        if problem.state_box is not None:  # in the box, as the annealed windows' starts
            lower, upper = jnp.asarray(problem.state_box, z.dtype).T
            out = {k: v if k == "params" else jnp.clip(v, lower, upper) for k, v in out.items()}
        return problem.to_banded(out)


def reads_time(problem) -> bool:
    """Whether the problem's vector field F(t, x, θ) reads t (a model of t, or inputs u(t)):
    whether t enters any operation of its trace (conservatively: also where the result is
    unused)."""
    x = jnp.zeros(problem.dim, problem.data.values.dtype)
    theta = problem.parameters(problem.init(jax.random.key(0)))
    theta = {name: theta[name] for name in problem.estimate}
    jaxpr = jax.make_jaxpr(lambda t: problem.vector_field(t, x, theta))(x[0]).jaxpr
    t = jaxpr.invars[0]
    return t in jaxpr.outvars or any(t in eqn.invars for eqn in jaxpr.eqns)


def _gauss_newton(problem, states, params, rf, iterations: int):
    """`iterations` Gauss–Newton linearisations from (states, params): all but the last
    take their step; the last's curvature is the Laplace Gaussian's and its step the
    polish. Returns the polished point, the selected inverse and the largest entry of the
    last step in posterior standard deviations."""
    n, d, p = problem.banded_shape

    def residuals(s, q):
        return problem.unnormalised_banded_residuals(s, q, rf)

    # Padding slots of the banded layout (the last interval's missing midpoint) are not
    # unknowns: no residual reads them, and a unit pivot there leaves the rest as it is.
    live = problem.to_banded(problem.from_banded(jnp.ones_like(states), params))[0] != 0
    padding = jax.vmap(jnp.diag)((~live).astype(states.dtype))

    def normal(s, q):
        ne = banded_normal_equations(
            _Jacobian(residuals, s, q), residuals(s, q), n, d, p, s.dtype, one_lane=True
        )
        return eqx.tree_at(lambda x: x.diagonal, ne, ne.diagonal + padding)

    def rhs(ne):
        return -ne.grad[: n * d].reshape(n, d), -ne.grad[n * d :]

    for _ in range(iterations - 1):
        ne = normal(states, params)
        ds, dq = solve_eliminated(ne.diagonal, ne.off, ne.border, ne.corner, *rhs(ne))
        states, params = states + ds, params + dq
    ne = normal(states, params)  # the last: its curvature is the Gaussian's
    inverse, (ds, dq) = selected_inversion_and_solve(
        ne.diagonal, ne.off, ne.border, ne.corner, *rhs(ne)
    )
    # the last step in posterior standard deviations
    std_s = jnp.sqrt(jnp.diagonal(inverse.diagonal, axis1=1, axis2=2))
    std_p = jnp.sqrt(jnp.diagonal(inverse.corner))
    size = jnp.maximum(jnp.max(jnp.abs(ds) / std_s), jnp.max(jnp.abs(dq) / std_p, initial=0.0))
    return states + ds, params + dq, inverse, size


def laplace(problem, states, params, rf, nodes, iterations: int):
    """The Gauss–Newton Laplace Gaussian after `iterations` linearisations from (states,
    params) (banded): the mean (the polished point, cut into the problem's box), the
    standard deviations, the joint covariances of (x, θ) at grid rows `nodes`, whether the
    curvature is positive definite, and the last step's size in standard deviations."""
    states, params, inverse, size = _gauss_newton(problem, states, params, rf, iterations)
    mean = problem.from_banded(states, params)
    box = problem.bounds()
    if box is not None:  # the Newton step may not leave the box (as `posterior`)
        mean = jax.tree.map(jnp.clip, mean, *box)
    std = problem.from_banded(
        jnp.sqrt(jnp.diagonal(inverse.diagonal, axis1=1, axis2=2)),
        jnp.sqrt(jnp.diagonal(inverse.corner)),
    )
    d, width, p = problem.dim, *problem.banded_shape[1:]
    keep = jnp.concatenate([jnp.arange(d), width + jnp.arange(p)])  # no midpoint slot

    def joint(i):  # the covariance of row i's states and θ
        block = jnp.block(
            [[inverse.diagonal[i], inverse.border[i]], [inverse.border[i].T, inverse.corner]]
        )
        block = block[keep[:, None], keep[None, :]]
        return (block + block.T) / 2

    return mean, std, jax.vmap(joint)(nodes), inverse.positive_definite, size


@eqx.filter_jit
def posterior(problem, unknowns, rf, nodes):
    """`_forecast.posterior`'s outputs from the Gauss–Newton curvature at an annealed
    minimum (one linearisation: the polish and the Gaussian), as the compiled windows
    take theirs."""
    states, params = problem.to_banded(unknowns)
    return laplace(problem, states, params, rf, nodes, 1)[:4]


def window(program: Program, carry: Carry, k):
    """Window k from `carry`: (the next carry, the window's record)."""
    problem, n_m, z = program.problem(carry, k)
    spo = problem.steps_per_obs
    a, e = program.starts[k], program.ends[k]
    after = program.starts[jnp.minimum(k + 1, len(program.starts) - 1)]
    rf = program.rf * program.n_ref / n_m
    states, params = program.first_guess(problem, carry, k, z)
    nodes = jnp.stack([(e - a) * spo, (after - a) * spo])
    mean, std, covs, positive, size = laplace(
        problem, states, params, rf, nodes, program.iterations
    )
    states, params = problem.to_banded(mean)
    at_end = jnp.concatenate([mean["path"][(e - a) * spo], params])
    at_next = jnp.concatenate([mean["path"][(after - a) * spo], params])
    fc = forecast(
        problem,
        program.times[e - program.shift],
        carry.analysis_z,
        carry.analysis_cov,
        program.shift * spo,
        program.precision,
    )
    action = problem.action(mean, rf)
    ok = (
        positive
        & (size <= program.tolerance)
        & jnp.isfinite(action)
        & jnp.all(jnp.isfinite(covs))
        & jnp.all(jnp.isfinite(states))
    )
    ring = k % len(carry.ring_z)
    new = Carry(
        at_next,
        covs[1],
        carry.ring_z.at[ring].set(at_end),
        carry.ring_cov.at[ring].set(covs[0]),
        at_end,
        covs[0],
        states,
        a,
        ok,
    )
    record = dict(mean=mean, std=std, covs=covs, forecast=fc, action=action)
    return new, record


@eqx.filter_jit
def run_chunk(program: Program, carry: Carry, first: Int[Array, ""]):
    """Windows first, first + 1, … (`CHUNK` of them) while each is eligible and converges:
    the records of all (those from the first that did not on unused) and how many did."""

    def body(carry, k):
        inside = k < len(program.ends)  # the last call's windows past the end: not run
        k = jnp.minimum(k, len(program.ends) - 1)
        go = carry.ok & inside & program.eligible[k]
        new, record = jax.lax.cond(go, lambda c: window(program, c, k), _skip(program, k), carry)
        done = go & new.ok  # once False, the windows after are not run
        return eqx.tree_at(lambda c: c.ok, new, done), (record, done)

    _, (records, done) = jax.lax.scan(body, carry, first + jnp.arange(CHUNK))
    return records, jnp.sum(done)


def _skip(program, k):
    """The branch of a window not run: the carry marked stopped, blank records."""

    def skip(carry):
        shapes = jax.eval_shape(lambda c: window(program, c, k)[1], carry)
        blank = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return eqx.tree_at(lambda c: c.ok, carry, jnp.asarray(False)), blank

    return skip
