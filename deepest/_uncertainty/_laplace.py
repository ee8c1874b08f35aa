"""The Laplace approximation at annealed minima: marginal standard deviations, log det H
and each minimum's probability mass."""

from collections.abc import Callable, Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
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


class LaplaceResult(AbstractResult):
    """The Laplace approximation P(X | Y) ≈ N(X*, H⁻¹) at each path's minimum X*, with
    H the Hessian of the unnormalised action A₀ (see
    [`deepest.AbstractProblem.unnormalised_action`][]).

    Arrays have a leading axis over the chosen `paths`.

    - `rf`: the model weight R_f of A₀.
    - `paths`: the indices of the paths in the annealing result.
    - `unknowns`: the means: each minimum X* polished by one Newton step
      X* − H⁻¹∇A₀(X*) (the mode exactly, for a Gaussian posterior; unchanged where H is
      not positive definite).
    - `std`: the marginal standard deviations of the unknowns, a pytree like `unknowns`.
    - `views`: the problem's named standard deviations (`paths_std`, `params_std` of an
      assimilation, `weights_std` of a training), also properties.
    - `action0`: A₀ at each minimum.
    - `log_det`: log det H, with H the Hessian in the reported quantities (bounded
      parameters θ, not their unbounded unknowns).
    - `log_mass`: the Laplace estimate of the log probability mass of each minimum's
      basin, −A₀* − ½·log det H + (n/2)·log 2π (up to one constant shared by all paths):
      it ranks minima by the mass around them, not the height alone.
    - `result`: [`deepest.RESULTS`][] codes per path: `successful`, or
      `not_positive_definite` where H is not (then the point is not a strict minimum and
      its statistics are NaN); `positive_definite` is that as booleans.
    - `end_covariance`: of a banded problem, the joint covariance of the last time's
      states and the parameters (in the banded layout, unknowns' coordinates), for
      `forecast`; `covariance`: of another problem, the whole H⁻¹.
    - `method`: "exact" or "gauss_newton".

    `warnings()` lists, as lines of text, the paths whose Hessian is not positive definite.

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

    def warnings(self, best: int | None = None) -> list[str]:
        """What in this result needs a look, as lines of text (empty if nothing does): the
        paths whose Hessian is not positive definite, and whether `best` (the annealing's
        best path; default: the lowest A₀ here) is among them.

        **Arguments:**

        - `best`: the index of the annealing result's best path ([`deepest.AnnealResult`][]'s
          `best`), or None.

        **Returns:** a list of lines.
        """
        bad = self.paths[~self.positive_definite]
        if not bad.size:
            return []
        if best is None:
            action0 = np.where(np.isfinite(self.action0), self.action0, np.inf)
            best = int(self.paths[np.argmin(action0)])
        if best in bad:
            among = f"the best path {best} among them"
        elif best in self.paths:
            among = f"not the best path {best}"
        else:
            among = f"the best path {best} not computed"
        return [
            f"Hessian of A₀ not positive definite at {bad.size} of {self.paths.size} paths "
            f"({bad.tolist()}; {among}): there the point is not a strict minimum (a saddle, "
            "or a direction the data and model leave flat), so its standard deviations are "
            "NaN. Anneal further (a higher final β, tighter ftol/gtol), fix or bound the "
            "parameters the data do not determine, or pass a prior=."
        ]

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
        is not linear for long.) Default path: the largest `log_mass`.

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
    # the padding slots of the banded layout have unit variance and no effect
    draws = jr.multivariate_normal(key, end, covariance, (n_samples,), method="eigh")

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


def _laplace_banded(problem, unknowns, rf, prior, gauss_newton):
    blocks, (g_states, g_params) = _banded_hessian(problem, unknowns, rf, prior, gauss_newton)
    inverse = selected_inversion(*blocks)
    states, params = problem.to_banded(unknowns)
    step_s, step_p = solve_block_tridiagonal(*blocks, -g_states, -g_params)
    mean = problem.from_banded(states + step_s, params + step_p)
    var_states = jnp.diagonal(inverse.diagonal, axis1=1, axis2=2)
    var_params = jnp.diagonal(inverse.corner)
    std = problem.from_banded(jnp.sqrt(var_states), jnp.sqrt(var_params))
    end = jnp.concatenate(
        [
            jnp.concatenate([inverse.diagonal[-1], inverse.border[-1]], axis=1),
            jnp.concatenate([inverse.border[-1].T, inverse.corner], axis=1),
        ]
    )
    return mean, std, inverse.log_det, inverse.positive_definite, end, None


def _laplace_dense(problem, unknowns, rf, prior, gauss_newton):
    if gauss_newton:
        raise ValueError(
            "`gauss_newton=True` needs a banded problem (its residuals); this one's exact "
            "Hessian is used with `gauss_newton=False`."
        )
    y, unravel = ravel_pytree(unknowns)

    def a0(z):
        u = unravel(z)
        return problem.unnormalised_action(u, rf) + (0.0 if prior is None else prior(u))

    hessian = jax.hessian(a0)(y)
    hessian = (hessian + hessian.T) / 2
    chol = jnp.linalg.cholesky(hessian)
    covariance = jsl.cho_solve((chol, True), jnp.eye(y.size, dtype=y.dtype))
    mean = unravel(y - covariance @ jax.grad(a0)(y))
    log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    positive = jnp.isfinite(log_det) & jnp.all(jnp.isfinite(covariance))
    std = unravel(jnp.sqrt(jnp.diagonal(covariance)))
    return mean, std, log_det, positive, None, covariance


@eqx.filter_jit
def _laplace_paths(problem, unknowns, rf, prior, gauss_newton):
    one = _laplace_banded if problem.banded_shape is not None else _laplace_dense

    def each(u):
        mean, std, log_det, positive, end, covariance = one(problem, u, rf, prior, gauss_newton)
        # The Newton step polishes the minimum to the mode (exact for a Gaussian); where H
        # is not positive definite the point stays as annealed.
        mean = jax.tree.map(lambda m, a: jnp.where(positive, m, a), mean, u)
        action0 = problem.unnormalised_action(mean, rf) + (0.0 if prior is None else prior(mean))
        # H in the reported quantities: H_θ = J⁻ᵀ H_u J⁻¹ at a stationary point.
        log_det = log_det - 2 * problem.log_jacobian(mean)
        return mean, std, action0, log_det, positive, end, covariance

    return jax.vmap(each)(unknowns)


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

    Parameters have a flat prior in the quantities the problem reports (bounded parameters
    θ, not their unbounded unknowns u): at a minimum the standard deviation of θ is
    |∂θ/∂u|·std(u) and log det H is that of H_θ.

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
    statistics NaN), and raised only when no path's is (`throw`).

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
    mean, std, action0, log_det, positive, end, covariance = _laplace_paths(
        problem, chosen, jnp.asarray(rf, dtype), prior, bool(gauss_newton)
    )
    n = ravel_pytree(jax.tree.map(lambda a: a[0], chosen))[0].size
    positive = np.asarray(positive)
    log_mass = np.where(
        positive,
        -np.asarray(action0) - 0.5 * np.asarray(log_det) + 0.5 * n * np.log(2 * np.pi),
        np.nan,
    )
    std = jax.device_get(std)
    codes = np.where(
        positive, codes_of(RESULTS.successful), codes_of(RESULTS.not_positive_definite)
    )
    out = LaplaceResult(
        rf=rf,
        paths=index,
        unknowns=jax.device_get(mean),
        std=std,
        views=jax.device_get(problem.uncertainty_views(mean, std)),
        action0=np.asarray(action0),
        log_det=np.where(positive, np.asarray(log_det), np.nan),
        log_mass=log_mass,
        result=results_of(codes),
        end_covariance=None if end is None else np.asarray(end),
        covariance=None if covariance is None else np.asarray(covariance),
        method="gauss_newton" if gauss_newton else "exact",
        problem=problem,
    )
    check_throw(
        throw, positive, out.result, "laplace: no path's Hessian of A₀ is positive definite"
    )
    return out
