"""The Laplace approximation at annealed minima: marginal standard deviations, log det H
and each minimum's probability mass."""

from collections.abc import Callable, Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import jax.scipy.special as jss
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, PRNGKeyArray, PyTree, Scalar

from .._annealing import (
    AbstractProblem,
    AnnealResult,
    banded_normal_equations,
    problem_digest,
    solve_block_tridiagonal,
)
from .._misc import cast_floating, renamed_keywords
from .._results import RESULTS, AbstractResult, check_throw, codes_of, results_of
from ._selected_inversion import selected_inversion

# A dense Hessian of more unknowns than this is refused (its inverse is formed).
_DENSE_LIMIT = 8000
# An unknown within this fraction of its box's width of a bound (of max(|bound|, 1) for a
# one-sided box) is on it: the minimisers project onto a bound exactly, the margin admits
# a bound met by rounding.
_AT_BOUND = 1e-9


class LaplaceResult(AbstractResult):
    """The Laplace approximation P(X | Y) ≈ N(X*, H⁻¹) at each path's minimum X*, with
    H the Hessian of the unnormalised action A₀ (see
    [`deepest.AbstractProblem.unnormalised_action`][]).

    Arrays have a leading axis over the chosen `paths`.

    - `rf`: the model weight R_f of A₀.
    - `paths`: the indices of the paths in the annealing result.
    - `unknowns`: the means: each minimum X* polished by one Newton step
      X* − H⁻¹∇A₀(X*) of the unknowns not on a bound, cut at the box (the mode exactly,
      for a Gaussian posterior; unchanged where H is not positive definite).
    - `std`: the marginal standard deviations of the unknowns, a pytree like `unknowns`
      (zero for an unknown held on its bound, see below).
    - `views`: the problem's named standard deviations (`paths_std`, `params_std` of an
      assimilation, `weights_std` of a training), also properties; and which of them lie
      on a bound of the problem's box (`paths_at_bound`, `params_at_bound`, …, booleans).
    - `action0`: A₀ at each minimum.
    - `log_det`: log det H_FF, with H the Hessian in the reported quantities and F the
      unknowns not on a bound (all of them, where nothing is).
    - `log_mass`: the Laplace estimate of the log probability mass of each minimum's
      basin, −A₀* − ½·log det H_FF + (n_F/2)·log 2π (up to one constant shared by all
      paths), plus for each unknown a on a bound log ∫₀^∞ exp(−g_a·t − ½h_a·t²) dt, with
      g_a the gradient of A₀ into the box and h_a = H_aa: the width of the posterior's
      boundary layer (1/g_a for a bound the gradient presses on, Laplace's method at a
      boundary; half a Gaussian where g_a = 0 and a is uncoupled from the rest). It ranks
      minima by the mass around them, not the height alone.
    - `at_bound`: booleans like `unknowns`: the unknown lies on a bound of the problem's
      box ([`deepest.AbstractProblem.bounds`][]); `params_at_bound` and `states_at_bound`
      (counts per path) read it for an assimilation. `None` in a file of an older version.
    - `result`: [`deepest.RESULTS`][] codes per path: `successful`, or
      `not_positive_definite` where H is not (then the point is not a strict minimum and
      its statistics are NaN); `positive_definite` is that as booleans.
    - `end_covariance`: of a banded problem, the joint covariance of the last time's
      states and the parameters (in the banded layout, unknowns' coordinates), for
      `forecast`; `covariance`: of another problem, the whole H⁻¹ (H_FF⁻¹, zero in the
      rows and columns of the unknowns on a bound).
    - `method`: "exact" or "gauss_newton".

    An unknown on a bound (an active constraint: the annealer's projected steps end there
    exactly) is held there: the Gaussian is that of the other unknowns given it, with
    zero variance for it and covariance H_FF⁻¹ for the rest (see [`deepest.laplace`][]).

    `warnings()` lists, as lines of text, the paths whose Hessian is not positive definite
    and the parameters of the best path on a bound. `intervals()` gives the bands
    mean ± k·σ cut at the box.

    `save(path)` writes it (`path/laplace.npz`), `LaplaceResult.load(path, problem)` reads
    it back.
    """

    file_name: ClassVar[str] = "laplace.npz"

    rf: np.ndarray
    paths: np.ndarray
    unknowns: PyTree[np.ndarray]
    std: PyTree[np.ndarray]
    views: dict
    action0: np.ndarray
    log_det: np.ndarray
    log_mass: np.ndarray
    result: RESULTS
    end_covariance: np.ndarray | None
    covariance: np.ndarray | None
    method: str
    problem: AbstractProblem | None
    at_bound: PyTree[np.ndarray] | None = None

    @property
    def positive_definite(self) -> np.ndarray:
        """(n,): H is positive definite at the path's minimum (`result` is `successful`)."""
        return codes_of(self.result) == codes_of(RESULTS.successful)

    @property
    def paths_std(self) -> np.ndarray:
        """(n, N_model, D): the states' marginal standard deviations (an assimilation's)."""
        return self.views["paths_std"]

    @property
    def params_std(self) -> dict[str, np.ndarray]:
        """{name: (n, …)}: the parameters' marginal standard deviations (an assimilation's)."""
        return self.views["params_std"]

    @property
    def weights_std(self) -> dict[str, np.ndarray]:
        """{name: (n, …)}: the weights' marginal standard deviations (a training's)."""
        return self.views["weights_std"]

    @property
    def params_at_bound(self) -> dict[str, np.ndarray]:
        """{name: (n, …) bool}: the parameters on a bound of their `bounds=` (an
        assimilation's; all False in a file of an older version)."""
        if "params_at_bound" in self.views:
            return self.views["params_at_bound"]
        return {n: np.zeros(np.shape(s), bool) for n, s in self.params_std.items()}

    @property
    def states_at_bound(self) -> np.ndarray:
        """(n,) int: how many of each path's other unknowns (an assimilation's states and
        midpoints) lie on a bound of their `state_bounds`."""
        n = self.paths.size
        if self.at_bound is None:
            return np.zeros(n, int)
        count = lambda tree: sum(  # noqa: E731
            np.asarray(a).reshape(n, -1).sum(1) for a in jax.tree.leaves(tree)
        )
        return np.asarray(count(self.at_bound) - count(self.params_at_bound), int)

    def warnings(self, best: int | None = None) -> list[str]:
        """What in this result needs a look, as lines of text (empty if nothing does): the
        paths whose Hessian is not positive definite, and whether `best` (the annealing's
        best path; default: the lowest A₀ here) is among them; each parameter of `best`
        that lies on a bound, and its states on a bound, where the Laplace Gaussian is cut.

        **Arguments:**

        - `best`: the index of the annealing result's best path ([`deepest.AnnealResult`][]'s
          `best`), or None.

        **Returns:** a list of lines.
        """
        if best is None:
            action0 = np.where(np.isfinite(self.action0), self.action0, np.inf)
            best = int(self.paths[np.argmin(action0)])
        lines = []
        bad = self.paths[~self.positive_definite]
        if bad.size:
            if best in bad:
                among = f"the best path {best} among them"
            elif best in self.paths:
                among = f"not the best path {best}"
            else:
                among = f"the best path {best} not computed"
            lines.append(
                f"Hessian of A₀ not positive definite at {bad.size} of {self.paths.size} "
                f"paths ({bad.tolist()}; {among}): there the point is not a strict minimum "
                "(a saddle, or a direction the data and model leave flat), so its standard "
                "deviations are NaN. Anneal further (a higher final β, tighter ftol/gtol), "
                "fix or bound the parameters the data do not determine, or pass a prior=."
            )
        if self.at_bound is not None and best in self.paths:
            lines += self._bound_lines(best)
        return lines

    def _bound_lines(self, best: int) -> list[str]:
        """The lines of `warnings` on the unknowns of path `best` that lie on a bound."""
        i = int(np.nonzero(self.paths == best)[0][0])
        lines = []
        meaning = (
            "the posterior is cut by the bound there, so the Gaussian of A₀'s curvature "
            "is one-sided: its ±2σ band reaches outside the box. This result holds {what} "
            "on the bound (std 0) and conditions the other unknowns' covariance on it (the "
            "inverse of the Hessian's free block), which understates the spread along the "
            "bound where A₀'s gradient there is small; `intervals()` cuts the bands at the "
            "box. For the cut posterior itself sample it with deepest.pamc (its target is "
            "truncated to the box), or widen the bounds if the model allows."
        )
        bounds = {} if self.problem is None else self.problem.parameter_bounds
        theta = {}
        if self.problem is not None and bounds:
            one = jax.tree.map(lambda a: np.asarray(a)[i : i + 1], self.unknowns)
            theta = {n: np.asarray(v)[0] for n, v in self.problem.views(one)["params"].items()}
        for name, flags in self.params_at_bound.items():
            flags = np.asarray(flags).reshape(self.paths.size, -1)
            if not flags[i].any():
                continue
            where = "a bound"
            if name in theta and name in bounds:
                low, high = bounds[name]
                value = np.ravel(theta[name])[flags[i]]
                nearer_low = np.abs(value - low) <= np.abs(value - high)
                sides = [
                    f"its {side} bound {b:g}"
                    for side, b, on in (("lower", low, nearer_low), ("upper", high, ~nearer_low))
                    if on.any()
                ]
                where = " and ".join(sides)
            count = (
                f"{int(flags[i].sum())} of {flags.shape[1]} entries; " if flags.shape[1] > 1 else ""
            )
            lines.append(
                f"parameter {name!r} of the best path {best} lies on {where} ({count}"
                f"{int(flags.any(1).sum())} of {self.paths.size} paths have it on a bound): "
                + meaning.format(what="it")
            )
        states = int(self.states_at_bound[i])
        if states:
            lines.append(
                f"{states} state entries of the best path {best} lie on a bound of their "
                "state_bounds: " + meaning.format(what="them")
            )
        return lines

    def _index(self, path: int | None) -> int:
        if path is None:
            if not self.positive_definite.any():
                raise ValueError("No path has a positive definite Hessian; name a `path`.")
            return int(np.nanargmax(np.where(self.positive_definite, self.log_mass, -np.inf)))
        where = np.nonzero(self.paths == path)[0]
        if not where.size:
            raise ValueError(f"Path {path} is not among this result's paths {self.paths.tolist()}.")
        return int(where[0])

    def bands(self, path: int | None = None):
        """An assimilation path's means and standard deviations in the reported quantities
        (default path: the largest `log_mass`).

        **Returns:** `(paths (N_model, D), paths_std (N_model, D), {name: (θ, θ_std)})`.
        """
        i = self._index(path)
        views = self.problem.views(jax.tree.map(lambda a: a[i : i + 1], self.unknowns))
        params = {
            n: (np.asarray(v)[0], np.asarray(self.params_std[n])[i])
            for n, v in views["params"].items()
        }
        return np.asarray(views["paths"])[0], np.asarray(self.paths_std[i]), params

    def intervals(self, path: int | None = None, width: float = 2.0):
        """An assimilation path's bands mean ± `width`·σ (of `bands`) cut at the problem's
        box, so that none reaches outside the bounds (default path: the largest
        `log_mass`).

        **Returns:** `(low (N_model, D), high (N_model, D), {name: (θ_low, θ_high)})`.
        """
        return cut_bands(self.problem, *self.bands(path), width)

    @renamed_keywords(t_end="t1")
    def forecast(
        self,
        t1: float,
        path: int | None = None,
        n_times: int = 200,
        n_samples: int = 256,
        key: PRNGKeyArray | None = None,
    ):
        """The forecast band of a path past the window: `n_samples` draws of the last
        states and the parameters from their Laplace Gaussian (`end_covariance`), each
        integrated to the end time `t1` by the problem's forecast; their mean and standard
        deviation per time. (Sampled rather than linearised: a chaotic forecast's spread
        is not linear for long.) A draw outside the problem's box is cut into it (each
        entry clipped to its bounds), so no forecast starts from outside the bounds; one
        held on a bound is drawn there. Default path: the largest `log_mass`.

        **Returns:** `(times, mean (n_times, D), std (n_times, D))`.
        """
        if self.end_covariance is None:
            raise ValueError("`forecast` needs a banded problem (an assimilation).")
        i = self._index(path)
        key = jr.key(0) if key is None else key
        u = jax.tree.map(lambda a: jnp.asarray(a[i]), self.unknowns)
        times, states = _forecast_band(
            self.problem, u, jnp.asarray(self.end_covariance[i]), key, t1, n_times, n_samples
        )
        return np.asarray(times), np.asarray(states.mean(0)), np.asarray(states.std(0))

    def linearised_std(self, fn: Callable[[PyTree[Array]], Array], path: int | None = None):
        """The value of `fn(unknowns)` at a path's minimum and its standard deviation by
        linearisation, sqrt(diag(J·H⁻¹·Jᵀ)) (e.g. a network's output for new inputs: the
        predictive spread from the weights). Needs the whole covariance (a problem that is
        not banded, such as a training).

        **Returns:** `(value, std)`, each shaped like `fn`'s output.
        """
        if self.covariance is None:
            raise ValueError(
                "`linearised_std` needs the whole covariance, kept for problems that are "
                "not banded; for an assimilation use `forecast`."
            )
        i = self._index(path)
        u = jax.tree.map(lambda a: jnp.asarray(a[i]), self.unknowns)
        y, unravel = ravel_pytree(u)
        value = fn(u)
        jac = jax.jacrev(lambda z: jnp.ravel(fn(unravel(z))))(y)
        var = jnp.einsum("oi,ij,oj->o", jac, jnp.asarray(self.covariance[i]), jac)
        return np.asarray(value), np.sqrt(np.maximum(np.asarray(var), 0)).reshape(np.shape(value))


def _forecast_band(problem, unknowns, covariance, key, t1, n_times, n_samples):
    # The problem is closed over, not traced: its forecast checks `t1` against its
    # concrete times.
    return jax.jit(lambda u, c, k: _forecast_draws(problem, u, c, k, t1, n_times, n_samples))(
        unknowns, covariance, key
    )


def _forecast_draws(problem, unknowns, covariance, key, t1, n_times, n_samples):
    states, params = problem.to_banded(unknowns)
    d = states.shape[1]
    end = jnp.concatenate([states[-1], params])
    # the padding slots of the banded layout have unit variance and no effect; unknowns
    # held on a bound have none (eigh samples a semidefinite covariance)
    draws = jr.multivariate_normal(key, end, covariance, (n_samples,), method="eigh")
    box = problem.bounds()
    if box is not None:
        low, high = (problem.to_banded(side) for side in box)
        draws = jnp.clip(
            draws,
            jnp.concatenate([low[0][-1], low[1]]).astype(end.dtype)[None],
            jnp.concatenate([high[0][-1], high[1]]).astype(end.dtype)[None],
        )

    def forecast(draw):
        u = problem.from_banded(states.at[-1].set(draw[:d]), draw[d:])
        return problem.forecast(u, t1, n_times)

    times, paths = jax.vmap(forecast)(draws)
    return times[0], paths


class _Jacobian(eqx.Module):
    """The Jacobian of banded residuals as the linear operator `banded_normal_equations`
    reads (`mv` on the flattened unknowns)."""

    fn: Callable
    states: Array
    params: Array

    def mv(self, v):
        n, d = self.states.shape
        tangent = (v[: n * d].reshape(n, d), v[n * d :])
        return jax.jvp(self.fn, (self.states, self.params), tangent)[1]


def _banded_hessian(problem, unknowns, rf, prior, gauss_newton: bool):
    """The Hessian of A₀ (+ prior) in blocks: diagonal (N, d, d), off (N − 1, d, d),
    border (N, d, p), corner (p, p).

    Exact: from 3d + p Hessian-vector products, since rows n and m couple only when
    |n − m| ≤ 1, a probe on the times n ≡ c (mod 3) finds for every row m the one column
    among m − 1, m, m + 1 it hits. Gauss–Newton: JᵀJ of the residuals scaled so that
    A₀ = ½|r|², by `banded_normal_equations`.
    """
    states, params = problem.to_banded(unknowns)
    n, d, p = problem.banded_shape
    dtype = states.dtype

    def residuals(s, q):  # A₀ = ½(|node|² + |interval|²)
        return problem.unnormalised_banded_residuals(s, q, rf)

    def prior_of(s, q):
        return 0.0 if prior is None else prior(problem.from_banded(s, q))

    def a0(s, q):
        node, interval = residuals(s, q)
        return 0.5 * (jnp.sum(node**2) + jnp.sum(interval**2)) + prior_of(s, q)

    grad = jax.grad(a0, argnums=(0, 1))
    if gauss_newton:
        normal = banded_normal_equations(
            _Jacobian(residuals, states, params), residuals(states, params), n, d, p, dtype
        )
        diagonal, off, border, corner = normal.diagonal, normal.off, normal.border, normal.corner
        if prior is not None and p:
            corner = corner + jax.hessian(lambda q: prior_of(states, q))(params)
    else:
        colour = (jnp.arange(n) % 3)[:, None] * d + jnp.arange(d)[None, :]  # (n, d)
        probes_s = (colour[None] == jnp.arange(3 * d + p)[:, None, None]).astype(dtype)
        probes_p = jnp.eye(3 * d + p, p, k=-3 * d, dtype=dtype)

        def hvp(ps, pp):
            return jax.jvp(grad, (states, params), (ps, pp))[1]

        hs, hq = jax.vmap(hvp)(probes_s, probes_p)  # (3d + p, n, d), (3d + p, p)
        times = jnp.arange(n)[:, None]
        diagonal = jnp.swapaxes(hs[colour, times], 1, 2)  # [m, i, a] = H[m, m][i, a]
        off = jnp.swapaxes(hs[colour[1:], times[:-1]], 1, 2)  # H[m, m + 1]
        border = jnp.moveaxis(hs[3 * d :], 0, -1)
        corner = hq[3 * d :].T
    diagonal = (diagonal + jnp.swapaxes(diagonal, 1, 2)) / 2
    corner = (corner + corner.T) / 2
    # Padding slots of the banded layout (e.g. the last interval's missing midpoint) are
    # not unknowns: a unit pivot there leaves the rest and log det unchanged.
    live = problem.to_banded(problem.from_banded(jnp.ones_like(states), params))[0] != 0
    diagonal = diagonal + jax.vmap(jnp.diag)((~live).astype(dtype))
    return (diagonal, off, border, corner), grad(states, params)


def _condition(blocks, free_states, free_params):
    """The blocks of H with the rows and columns of the held unknowns (free 0) replaced by
    those of the identity: its inverse is H_FF⁻¹ on the free unknowns, its log det that of
    H_FF, and a Newton step from a gradient zeroed on the held ones leaves them put."""
    diagonal, off, border, corner = blocks
    ms, mp = free_states, free_params
    diagonal = diagonal * ms[:, :, None] * ms[:, None, :] + jax.vmap(jnp.diag)(1 - ms)
    off = off * ms[:-1, :, None] * ms[1:, None, :]
    border = border * ms[:, :, None] * mp[None, None, :]
    corner = corner * mp[:, None] * mp[None, :] + jnp.diag(1 - mp)
    return diagonal, off, border, corner


def _laplace_banded(problem, unknowns, rf, prior, gauss_newton, held, node=-1):
    """The Laplace Gaussian of a banded problem at one minimum; `end` is the joint
    covariance of the states of row `node` (default the last; may be traced, or a vector
    of rows, then one covariance each) and θ."""
    blocks, (g_states, g_params) = _banded_hessian(problem, unknowns, rf, prior, gauss_newton)
    # padding slots are not held (zero in the banded layout): they keep their unit pivot
    free_s, free_p = (1 - a for a in problem.to_banded(held))
    blocks, curvature = _condition(blocks, free_s, free_p), blocks
    inverse = selected_inversion(*blocks)
    states, params = problem.to_banded(unknowns)
    step_s, step_p = solve_block_tridiagonal(*blocks, -g_states * free_s, -g_params * free_p)
    mean = problem.from_banded(states + step_s, params + step_p)
    var_states = jnp.diagonal(inverse.diagonal, axis1=1, axis2=2) * free_s
    var_params = jnp.diagonal(inverse.corner) * free_p
    std = problem.from_banded(jnp.sqrt(var_states), jnp.sqrt(var_params))

    def joint(i):  # the covariance of row i's states and θ
        block = jnp.concatenate(
            [
                jnp.concatenate([inverse.diagonal[i], inverse.border[i]], axis=1),
                jnp.concatenate([inverse.border[i].T, inverse.corner], axis=1),
            ]
        )
        free = jnp.concatenate([free_s[i], free_p])
        return block * free[:, None] * free[None, :]

    end = joint(node) if jnp.ndim(node) == 0 else jax.vmap(joint)(node)
    h = problem.from_banded(
        jnp.diagonal(curvature[0], axis1=1, axis2=2), jnp.diagonal(curvature[3])
    )
    return mean, std, inverse.log_det, inverse.positive_definite, end, None, h


def _laplace_dense(problem, unknowns, rf, prior, gauss_newton, held):
    if gauss_newton:
        raise ValueError(
            "`gauss_newton=True` needs a banded problem (its residuals); this one's exact "
            "Hessian is used with `gauss_newton=False`."
        )
    y, unravel = ravel_pytree(unknowns)
    free = 1 - ravel_pytree(held)[0]

    def a0(z):
        u = unravel(z)
        return problem.unnormalised_action(u, rf) + (0.0 if prior is None else prior(u))

    hessian = jax.hessian(a0)(y)
    hessian = (hessian + hessian.T) / 2
    conditioned = hessian * free[:, None] * free[None, :] + jnp.diag(1 - free)
    chol = jnp.linalg.cholesky(conditioned)
    covariance = jsl.cho_solve((chol, True), jnp.eye(y.size, dtype=y.dtype))
    covariance = covariance * free[:, None] * free[None, :]
    mean = unravel(y - covariance @ jax.grad(a0)(y))
    log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    positive = jnp.isfinite(log_det) & jnp.all(jnp.isfinite(covariance))
    std = unravel(jnp.sqrt(jnp.diagonal(covariance)))
    return mean, std, log_det, positive, None, covariance, unravel(jnp.diagonal(hessian))


def flat_box(problem: AbstractProblem, template: PyTree[Array]) -> tuple[Array, Array] | None:
    """The problem's box ([`deepest.AbstractProblem.bounds`][]) as flat (lower, upper) in
    the layout and dtype of `ravel_pytree(template)` (one path's unknowns); `None` when
    nothing is bounded."""
    box = problem.bounds()
    if box is None:
        return None
    flat, _ = ravel_pytree(template)
    return tuple(
        ravel_pytree(
            jax.tree.map(
                lambda b, t: jnp.broadcast_to(jnp.asarray(b, t.dtype), t.shape), side, template
            )
        )[0].astype(flat.dtype)
        for side in box
    )


def cut_bands(problem: AbstractProblem, paths, paths_std, params: dict, width: float):
    """mean ± `width`·σ of an assimilation's bands (`paths`, `paths_std`, {name: (θ, σ)})
    clipped to the problem's box: `(low, high, {name: (θ_low, θ_high)})`."""
    paths, paths_std = np.asarray(paths), np.asarray(paths_std)
    low, high = paths - width * paths_std, paths + width * paths_std
    cut = {
        n: (np.asarray(m) - width * np.asarray(s), np.asarray(m) + width * np.asarray(s))
        for n, (m, s) in params.items()
    }
    box = None if problem is None else problem.bounds()
    if box is None:
        return low, high, cut
    lower, upper = (problem.views(jax.tree.map(lambda a: jnp.asarray(a)[None], b)) for b in box)

    def clip(a, name=None):
        side = [v["paths"] if name is None else v["params"][name] for v in (lower, upper)]
        return np.clip(a, *(np.asarray(v)[0] for v in side))

    return (
        clip(low),
        clip(high),
        {n: (clip(lo, n), clip(hi, n)) for n, (lo, hi) in cut.items()},
    )


def _boundary_layer(g, h):
    """log ∫₀^∞ exp(−g·t − ½h·t²) dt: the log width of the posterior's layer along a
    bound, g the gradient of A₀ into the box and h its curvature there (−log g where
    h ≤ 0)."""
    curved = h > 0
    h = jnp.where(curved, h, 1)
    layer = 0.5 * jnp.log(2 * jnp.pi / h) + g**2 / (2 * h) + jss.log_ndtr(-g / jnp.sqrt(h))
    # neither curved nor pressed against the bound: no finite layer (+inf, not NaN)
    flat = jnp.where(g > 0, -jnp.log(jnp.where(g > 0, g, 1)), jnp.inf)
    return jnp.where(curved, layer, flat)


def bound_margins(lower, upper, relative: float = _AT_BOUND):
    """How near each bound counts as on it: `relative` times the box's width, or times
    max(|bound|, 1) for a one-sided box (inf for a missing side). **Returns:** `(of the
    lower bounds, of the upper ones)`."""
    width = upper - lower
    return tuple(
        relative * jnp.where(jnp.isfinite(width), width, jnp.maximum(jnp.abs(b), 1))
        for b in (lower, upper)
    )


def _sides(y, lower, upper):
    """+1 where `y` lies on its lower bound, −1 on its upper one, 0 elsewhere (within
    `bound_margins`)."""
    lower, upper = (jnp.broadcast_to(b, y.shape) for b in (lower, upper))
    # as AnnealResult.params_at_bound: √ε of a lower precision (a float32 bound of 100
    # has an ulp of 7.6e-6, above 1e-9 of most widths)
    relative = max(
        _AT_BOUND, float(jnp.sqrt(jnp.finfo(y.dtype).eps)) if y.dtype != jnp.float64 else 0
    )
    near_low, near_high = bound_margins(lower, upper, relative)
    on_low = (lower > -np.inf) & (y - lower <= near_low)
    on_high = (upper < np.inf) & (upper - y <= near_high) & ~on_low
    return on_low.astype(y.dtype) - on_high.astype(y.dtype)


@eqx.filter_jit
def _laplace_paths(problem, unknowns, sides, box, rf, prior, gauss_newton):
    one = _laplace_banded if problem.banded_shape is not None else _laplace_dense

    def a0(u):
        return problem.unnormalised_action(u, rf) + (0.0 if prior is None else prior(u))

    def each(u, side):
        y, unravel = ravel_pytree(u)
        held = side != 0
        if box is not None:
            # held unknowns exactly on their bounds: the Gaussian sits on the face
            y = jnp.where(side > 0, box[0], jnp.where(side < 0, box[1], y))
            u = unravel(y)
        out = one(problem, u, rf, prior, gauss_newton, unravel(held.astype(y.dtype)))
        mean, std, log_det, positive, end, covariance, curvature = out
        # The Newton step polishes the minimum to the mode (exact for a Gaussian); where H
        # is not positive definite the point stays as annealed.
        mean = jax.tree.map(lambda m, a: jnp.where(positive, m, a), mean, u)
        if box is not None:  # a free unknown's step may not leave the box either
            mean = unravel(jnp.clip(ravel_pytree(mean)[0], *box))
        action0 = a0(mean)
        # H in the reported quantities: H_θ = J⁻ᵀ H_u J⁻¹ at a stationary point.
        log_det = log_det - 2 * problem.log_jacobian(mean)
        inward = side * ravel_pytree(jax.grad(a0)(mean))[0]
        layers = _boundary_layer(inward, ravel_pytree(curvature)[0])
        boundary = jnp.sum(jnp.where(held, layers, 0))
        final = jnp.zeros_like(y) if box is None else _sides(ravel_pytree(mean)[0], *box)
        return mean, std, action0, log_det, positive, end, covariance, boundary, final

    return jax.vmap(each)(unknowns, sides)


def _check_result(problem: AbstractProblem, result) -> tuple[PyTree, np.ndarray | None]:
    """The unknowns (leading axis: paths) and R_f table of `result`, checked against
    `problem`."""
    if isinstance(result, AnnealResult):
        unknowns = result.unknowns
        digest = result.stats.get("problem")
        if result.problem is not None:
            digest = problem_digest(result.problem)
        dtype = np.asarray(jax.tree.leaves(unknowns)[0]).dtype  # the run's cast
        here = problem_digest(problem, dtype)
        if digest is not None and digest != here:
            raise ValueError(
                "This result was annealed on another problem (its data, weights or settings "
                f"differ: {digest} there, {here} here)."
            )
        rf_table = np.asarray(result.rf)[result.last_beta]
    else:
        unknowns, rf_table = result, None
    expected = jax.eval_shape(problem.init, jax.random.key(0))
    got = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], np.asarray(a).dtype), unknowns
    )
    shapes = lambda t: jax.tree.map(lambda a: a.shape, t)  # noqa: E731
    if jax.tree.structure(expected) != jax.tree.structure(got) or shapes(expected) != shapes(got):
        raise ValueError(
            "These unknowns do not fit the problem: expected one path's unknowns of shapes "
            f"{shapes(expected)} (with a leading axis over paths); got {shapes(got)}."
        )
    return unknowns, rf_table


def laplace(
    problem: AbstractProblem,
    result: AnnealResult | PyTree[ArrayLike],
    rf: ArrayLike | None = None,
    paths: int | Sequence[int] | None = None,
    *,
    gauss_newton: bool = False,
    prior: Callable[[PyTree[Array]], Scalar] | None = None,
    throw: bool = True,
) -> LaplaceResult:
    r"""The Laplace approximation to P(X | Y) ∝ exp(−A₀(X; R_f)) at annealed minima.

    At each path's minimum X*, H = ∇²A₀(X*) (exact, by JAX; or its Gauss–Newton part
    JᵀJ, positive semidefinite everywhere) gives P(X | Y) ≈ N(X*, H⁻¹) (Abarbanel,
    Rozdeba & Shirman 2018; Ye et al. 2015). For a banded problem
    ([`deepest.Assimilation`][]) H is block tridiagonal in time bordered by the
    parameters, and the marginal standard deviations come from a selected inversion
    ([`deepest.selected_inversion`][], O(N·D³), no dense inverse); for another problem
    (a training) H is formed densely and inverted (up to 8000 unknowns).

    Parameters have a flat prior in the quantities the problem reports, cut to the box
    of its bounds ([`deepest.AbstractProblem.bounds`][]: an assimilation's `bounds=` and
    `state_bounds=`). An unknown that lies on a bound (an active constraint, within
    1e-9 of the box's width) is held there: with A the unknowns on a bound and F the
    rest, the result is the Gaussian of X_F given X_A, N(X*_F, H_FF⁻¹), with zero
    variance for X_A, and the Newton step moves X_F only. Where A₀'s gradient g presses
    on the bound, the posterior's mass lies within ~1/g of it; g grows with the
    precision λ while the free unknowns' spread shrinks only as 1/√λ, so that layer is
    thin beside the spread and this conditional is the leading Laplace approximation of
    the cut posterior. The full H⁻¹ would instead centre a Gaussian on the bound with
    half its mass outside the box, and widen the free unknowns by their coupling to a
    direction the bound forbids. Where g is near zero (an unconstrained minimum on the
    bound) the cut posterior is a half-Gaussian, wider than the conditional: sample it
    with [`deepest.pamc`][] there.

    **Arguments:**

    - `problem`: the problem `result` was annealed on.
    - `result`: an [`deepest.AnnealResult`][] (its final minima), or unknowns with a
      leading axis over paths (then give `rf`).
    - `rf`: the model weight R_f of A₀ (default: the result's last finished β). The
      Hessian is taken at the result's unknowns whatever `rf` is.
    - `paths`: a path index or indices (default: all).
    - `gauss_newton`: use JᵀJ instead of the exact Hessian (banded problems).
    - `prior`: −log p of the unknowns' parameters (up to a constant), added to A₀; for
      a banded problem it may depend on the parameters only.
    - `throw`: raise if no path's Hessian is positive definite (an
      `equinox.EquinoxRuntimeError` naming the [`deepest.RESULTS`][] message); with
      `False` return the result with its codes.

    **Returns:** a [`deepest.LaplaceResult`][]. A Hessian that is not positive definite is
    reported per path (`result` `not_positive_definite`, `positive_definite` False, its
    statistics NaN), and raised only when no path's is (`throw`); of the unknowns held on
    a bound only H_FF must be. The unknowns on a bound are in `at_bound`, and
    `warnings()` names the best path's parameters among them.

    **Example:**

        result = deepest.anneal(problem, schedule, n_paths=16, key=key)
        lap = deepest.laplace(problem, result)
        lap.params_std["forcing"], lap.paths_std  # marginal standard deviations
    """
    if not isinstance(problem, AbstractProblem):
        raise TypeError(
            f"`problem` must be a deepest.AbstractProblem; got {type(problem).__name__}."
        )
    problem.action_counts  # noqa: B018  (raises for a problem without A₀)
    unknowns, rf_table = _check_result(problem, result)
    if rf is None:
        if rf_table is None:
            raise ValueError("Give `rf`: bare unknowns carry no schedule to read it from.")
        rf = rf_table
    rf = np.asarray(rf, dtype=float)
    if not np.all(np.isfinite(rf)) or np.any(rf <= 0):
        raise ValueError(f"`rf` must be positive and finite; got {rf}.")
    problem.check_rf(rf)
    n_paths = jax.tree.leaves(unknowns)[0].shape[0]
    if paths is None:
        index = np.arange(n_paths)
    else:
        index = np.atleast_1d(np.asarray(paths))
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer) or not index.size:
            raise ValueError(f"`paths` must be a path index or a list of them; got {paths!r}.")
        if np.any(index < 0) or np.any(index >= n_paths):
            raise ValueError(f"`paths` must lie in [0, {n_paths}); got {index.tolist()}.")
    chosen = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)[index]), unknowns)
    if problem.banded_shape is None:
        size = ravel_pytree(jax.tree.map(lambda a: a[0], chosen))[0].size
        if size > _DENSE_LIMIT:
            raise ValueError(
                f"{type(problem).__name__} is not banded, so its Hessian is dense: {size} "
                f"unknowns is more than the {_DENSE_LIMIT} this inverts."
            )
    dtype = jax.tree.leaves(chosen)[0].dtype
    problem = cast_floating(problem, dtype)  # as the run that found the minima cast it
    template, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], chosen))
    flat = jax.vmap(lambda u: ravel_pytree(u)[0])(chosen)
    box = flat_box(problem, unravel(template))
    sides = jnp.zeros_like(flat) if box is None else _sides(flat, *box)
    mean, std, action0, log_det, positive, end, covariance, boundary, final = _laplace_paths(
        problem, chosen, sides, box, jnp.asarray(rf, dtype), prior, bool(gauss_newton)
    )
    n = template.size - np.sum(np.asarray(sides) != 0, axis=1)  # the free unknowns
    positive = np.asarray(positive)
    log_mass = np.where(
        positive,
        -np.asarray(action0)
        - 0.5 * np.asarray(log_det)
        + 0.5 * n * np.log(2 * np.pi)
        + np.asarray(boundary),
        np.nan,
    )
    std = jax.device_get(std)
    at_bound = jax.tree.map(lambda a: np.asarray(a) != 0, jax.vmap(unravel)(final))
    views = problem.uncertainty_views(mean, std)
    views.update(
        {
            k.removesuffix("_std") + "_at_bound": v
            for k, v in problem.uncertainty_views(mean, at_bound).items()
        }
    )
    codes = np.where(
        positive, codes_of(RESULTS.successful), codes_of(RESULTS.not_positive_definite)
    )
    out = LaplaceResult(
        rf=rf,
        paths=index,
        unknowns=jax.device_get(mean),
        std=std,
        views=jax.device_get(views),
        action0=np.asarray(action0),
        log_det=np.where(positive, np.asarray(log_det), np.nan),
        log_mass=log_mass,
        result=results_of(codes),
        end_covariance=None if end is None else np.asarray(end),
        covariance=None if covariance is None else np.asarray(covariance),
        method="gauss_newton" if gauss_newton else "exact",
        problem=problem,
        at_bound=at_bound,
    )
    check_throw(
        throw, positive, out.result, "laplace: no path's Hessian of A₀ is positive definite"
    )
    return out
