"""The numerics of one cycle: the discretisation stepped forward (the forecast), the
Gaussian carried by its tangent linear model, prior paths through a window, and the
window's Laplace posterior at one node."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optimistix as optx
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._uncertainty._laplace import _laplace_banded


def _theta(problem, z: Float[Array, " n"]) -> dict[str, Array]:
    """The estimated parameters of a flat z = (x, θ) (θ in `estimate` order)."""
    params = problem.from_banded(jnp.zeros((1, problem.banded_shape[1]), z.dtype), z[problem.dim :])
    return params["params"]


def step(problem, t0, h, x: Float[Array, " dim"], theta) -> tuple[Array, Array | None]:
    """One interval of the problem's discretisation from state `x` at `t0`: the state at
    `t0 + h` (and the interval's midpoint state, for a scheme that has one) solving the
    interval's residuals = 0 by Newton's method (for an explicit scheme, whose residual is
    x(n+1) − Φ(x(n)), the guess minus its residual). Differentiable (implicitly) in `x`
    and `theta`."""
    ts = jnp.stack([t0, t0 + h])
    mids = problem.discretisation.has_midpoints
    guess = x + h * problem.vector_field(t0, x, theta)
    y0 = (guess, (x + guess) / 2) if mids else (guess, None)

    def residual(y, args):
        x1, mid = y
        path = jnp.stack([args[0], x1])
        out = problem.discretisation.residuals(
            problem.vector_field, ts, path, args[1], None if mid is None else mid[None]
        )
        return tuple(r[0] for r in out)

    if problem.discretisation.explicit:
        return guess - residual(y0, (x, theta))[0], None

    scale = 1.0 + jnp.max(jnp.abs(x))
    tol = 1e4 * jnp.finfo(x.dtype).eps
    solution = optx.root_find(
        residual,
        optx.Newton(rtol=tol, atol=tol * scale),
        y0,
        (x, theta),
        max_steps=50,
        throw=False,
    )
    return solution.value


def run_model(problem, t0, z: Float[Array, " n"], n_steps: int):
    """The model's discrete path from z = (x, θ) at `t0` over `n_steps` intervals of the
    problem's grid: states (n_steps + 1, D) and midpoints (n_steps, D) or None."""
    h = problem.ts[1] - problem.ts[0]
    theta = _theta(problem, z)

    def body(x, n):
        x1, mid = step(problem, t0 + n * h, h, x, theta)
        return x1, (x1, mid)

    _, (states, mids) = jax.lax.scan(body, z[: problem.dim], jnp.arange(n_steps, dtype=z.dtype))
    return jnp.concatenate([z[None, : problem.dim], states]), mids


@eqx.filter_jit
def forecast(problem, t0, mean, cov, n_steps: int, model_precision):
    """The Gaussian N(mean, cov) of z = (x, θ) at `t0` carried `n_steps` intervals ahead:
    the mean by the model, the covariance by its tangent linear model M (cov ← M cov Mᵀ
    + Q each step, Q = diag(1/model_precision) on the states: the action's model error)
    — the Kalman filter's forecast, exactly for a linear model and an explicit scheme.

    **Returns:** the states (n_steps + 1, D) of the mean path, the standard deviations
    of the states at the grid's nodes (n_steps + 1, D), and the covariance of z at the end.
    """
    h = problem.ts[1] - problem.ts[0]
    d = problem.dim

    def one(z, n):
        def move(z):
            x1, _ = step(problem, t0 + n * h, h, z[:d], _theta(problem, z))
            return jnp.concatenate([x1, z[d:]])

        return move(z), jax.jacfwd(move)(z)

    def body(carry, n):
        z, c = carry
        z1, m = one(z, n)
        c1 = m @ c @ m.T
        c1 = c1.at[:d, :d].add(jnp.diag(jnp.broadcast_to(1 / model_precision, (d,))))
        c1 = (c1 + c1.T) / 2
        return (z1, c1), (z1[:d], jnp.sqrt(jnp.diagonal(c1)[:d]))

    (_, end), (states, stds) = jax.lax.scan(
        body, (mean, cov), jnp.arange(n_steps, dtype=mean.dtype)
    )
    first = jnp.sqrt(jnp.diagonal(cov)[:d])
    return (
        jnp.concatenate([mean[None, :d], states]),
        jnp.concatenate([first[None], stds]),
        end,
    )


@eqx.filter_jit
def prior_paths(problem, t0, mean, chol, key: PRNGKeyArray, n: int, lower, upper):
    """`n` paths of unknowns through the window: z = (x₀, θ) drawn from N(mean, L·Lᵀ)
    (cut into the box [lower, upper]) and run by the model; the first is the mean's."""
    noise = jr.normal(key, (n, mean.size), mean.dtype).at[0].set(0)
    zs = jnp.clip(mean[None] + noise @ chol.T, lower[None], upper[None])
    n_steps = problem.n_model - 1

    def unknowns(z):
        states, mids = run_model(problem, t0, z, n_steps)
        out = {"path": states, "params": _theta(problem, z)}
        if mids is not None:
            out["midpoints"] = mids
        return out

    return jax.vmap(unknowns)(zs)


@eqx.filter_jit
def posterior(problem, unknowns: PyTree[Array], rf, nodes, gauss_newton: bool = False):
    """The Laplace Gaussian of the window at one minimum (the exact Hessian of A₀, or its
    Gauss–Newton part): the mean (the minimum polished by a Newton step), the marginal
    standard deviations, the joint covariances of the states at grid rows `nodes` (traced,
    a vector) and θ, and whether the Hessian is positive definite."""
    held = jax.tree.map(jnp.zeros_like, unknowns)
    mean, std, _, positive, cov, _, _ = _laplace_banded(
        problem, unknowns, rf, None, gauss_newton, held, nodes
    )
    box = problem.bounds()
    if box is not None:  # the Newton step may not leave the box (held bounds are not modelled)
        mean = jax.tree.map(jnp.clip, mean, *box)
    d, p = problem.dim, problem.banded_shape[2]
    width = problem.banded_shape[1]
    keep = jnp.concatenate([jnp.arange(d), width + jnp.arange(p)])  # no midpoint slot
    cov = cov[..., keep[:, None], keep[None, :]]
    return mean, std, (cov + jnp.swapaxes(cov, -1, -2)) / 2, positive
