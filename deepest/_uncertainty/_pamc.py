"""Precision annealing Monte Carlo: Hamiltonian Monte Carlo on exp(−A₀(X; R_f)) along the
R_f schedule, many chains in one program, each β started from the last one's samples."""

import hashlib
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, PRNGKeyArray, PyTree, Scalar

from .._annealing import (
    AbstractProblem,
    AnnealResult,
    AnnealSchedule,
    Interruption,
    check_fingerprints,
    package_version,
    problem_digest,
)
from .._io import load_npz, save_npz
from .._misc import renamed_keywords
from .._results import (
    RESULTS,
    AbstractResult,
    check_throw,
    codes_of,
    name_of,
    results_of,
)
from ._laplace import _AT_BOUND, _banded_hessian, _check_result, bound_margins, cut_bands, flat_box
from ._selected_inversion import BlockFactor, factor

# blackjax is imported when sampling starts: importing it initialises JAX's backends,
# which must wait for `jax.distributed.initialize` in a run of several processes.
_KERNELS = ("hmc", "nuts")
# What each β adds to the result, in the order `_statistics` returns the first six.
_RECORDS = ("a_mean", "a_std", "mean", "std", "ess", "rhat", "acc", "step")


class PAMCResult(AbstractResult):
    """The outcome of [`deepest.pamc`][]: per β of the schedule it ran (`betas`),

    - `rf`: the model weights R_f, (n_run,) or (n_run, D).
    - `action0_mean`, `action0_std`: ⟨A₀⟩ over the samples and its spread, (n_run,).
    - `mean`, `std`: posterior means and standard deviations of the unknowns, pytrees
      with a leading (n_run,) axis; `views` the problem's named ones (`paths`, `params`,
      `paths_std`, `params_std` of an assimilation), in the reported quantities (bounded
      parameters θ).
    - `mc_error`: the Monte Carlo standard error of each mean, std/√ESS (like `mean`).
    - `ess`: the effective sample size of each unknown across chains (like `mean`);
      `rhat`: its rank-normalised split-R̂ (Vehtari et al. 2021).
    - `acceptance`: (n_run, n_chains) each chain's mean acceptance probability;
      `step_size`: the adapted step sizes.
    - `result`: (n_chains,) [`deepest.RESULTS`][] codes: `successful`, `nonfinite` for a
      chain whose samples turned non-finite (flagged and left out of every later
      statistic; the others are kept), `not_positive_definite` for every chain when the
      whitening factor failed (sampling stopped there). `finite` is `successful` as
      booleans.
    - `samples`: {β: the problem's views of the draws, in the reported quantities
      (`paths` and bounded parameters θ `params` of an assimilation), each with leading
      axes (n_chains, n_samples)} for the β's of `save_betas`. Every draw lies in the
      problem's box (the target is cut to it).
    - `unknown_samples`: {β: the draws of the unknowns u themselves (n_chains, n_samples,
      …)} for the same β's (θ = `problem.parameters(u)`).
    - `stats`: `run_time` and `first_beta_time` (seconds; the first β's includes the
      compile, which the later β's reuse), `leapfrog_steps` (of the kept
      draws, all chains and β's; each is one gradient of A₀).
    - `partial`: True for a run that was interrupted (Ctrl-C or
      [`deepest.annealing.INTERRUPT`][]): `betas` are the β's it finished; resume it from
      its checkpoint.

    When every chain failed at a β (and `throw=False`), sampling stopped there: that β is
    the last of `betas`, with NaN statistics.

    `warnings()` lists what in the run calls for more sampling (R̂, ESS, flagged chains,
    an interruption). `intervals()` gives the bands mean ± k·σ cut at the problem's box.
    `save(path)` writes it (`path/pamc.npz`), `PAMCResult.load(path, problem)` reads it
    back.
    """

    file_name: ClassVar[str] = "pamc.npz"
    checkpoint_name: ClassVar[str] = "pamc-checkpoint.npz"
    """The file that `pamc(checkpoint=folder)` writes in `folder` after every β."""

    betas: np.ndarray
    rf: np.ndarray
    action0_mean: np.ndarray
    action0_std: np.ndarray
    mean: PyTree[np.ndarray]
    std: PyTree[np.ndarray]
    mc_error: PyTree[np.ndarray]
    ess: PyTree[np.ndarray]
    rhat: PyTree[np.ndarray]
    views: dict
    acceptance: np.ndarray
    step_size: np.ndarray
    result: RESULTS
    samples: dict
    unknown_samples: dict
    stats: dict
    problem: AbstractProblem | None
    partial: bool = False

    @property
    def finite(self) -> np.ndarray:
        """(n_chains,): the chain's samples are kept (`result` is `successful`); False for
        a chain that turned non-finite."""
        return codes_of(self.result) == codes_of(RESULTS.successful)

    def warnings(self, max_rhat: float = 1.05, min_ess: float = 100) -> list[str]:
        """What in this run calls for more sampling, one line each: every β whose largest
        R̂ exceeds `max_rhat` or whose smallest ESS is below `min_ess` (Vehtari et al.
        2021's thresholds), chains flagged non-finite, and an interrupted run. Empty when
        nothing is amiss.

        **Returns:** a list of sentences.
        """
        lines = []
        for j, beta in enumerate(np.asarray(self.betas).tolist()):
            where = f"β = {beta} (R_f = {_rf_text(self.rf[j])})"
            rhat, ess = _extreme(self.rhat, j, np.max), _extreme(self.ess, j, np.min)
            if rhat > max_rhat:
                lines.append(
                    f"{where}: max R̂ = {rhat:.3f} > {max_rhat}: the chains have not mixed; "
                    "raise n_warmup and n_samples or n_chains, or sample with kernel='nuts' "
                    "or precondition=True if it was not."
                )
            if ess < min_ess:
                lines.append(
                    f"{where}: min ESS = {ess:.0f} < {min_ess:g}: the Monte Carlo error "
                    "of the means is large; raise n_samples or n_chains (and n_warmup, or "
                    "sample with precondition=True, if the acceptance or R̂ is poor too)."
                )
        codes = codes_of(self.result)
        failed = codes != codes_of(RESULTS.successful)
        if failed.any():
            names = sorted({name_of(c) for c in codes[failed]})
            lines.append(
                f"{int(failed.sum())} of {codes.size} chains failed ({', '.join(names)}; "
                "see deepest.RESULTS): they are left out of every statistic from the β they "
                "failed at."
            )
        if self.partial:
            lines.append(
                f"The run was interrupted after β = {int(self.betas[-1])}: the later β's "
                "were not sampled; resume it from its checkpoint (pamc(..., resume=folder))."
            )
        return lines

    def _beta_index(self, beta: int | None) -> int:
        if beta is None:
            return len(self.betas) - 1
        where = np.nonzero(self.betas == beta)[0]
        if not where.size:
            raise ValueError(f"β = {beta} was not run; these were: {self.betas.tolist()}.")
        return int(where[0])

    def bands(self, beta: int | None = None):
        """An assimilation's posterior means and standard deviations at a β (default: the
        last run), of the reported quantities (θ, not θ of the mean of u).

        **Returns:** `(paths (N_model, D), paths_std (N_model, D), {name: (θ, θ_std)})`.
        """
        j = self._beta_index(beta)
        views = self.views
        params = {
            n: (np.asarray(v)[j], np.asarray(views["params_std"][n])[j])
            for n, v in views["params"].items()
        }
        return np.asarray(views["paths"][j]), np.asarray(views["paths_std"][j]), params

    def intervals(self, beta: int | None = None, width: float = 2.0):
        """An assimilation's bands mean ± `width`·σ (of `bands`) at a β (default: the last
        run) cut at the problem's box: the samples never leave it, but a band of a
        posterior cut by a bound would.

        **Returns:** `(low (N_model, D), high (N_model, D), {name: (θ_low, θ_high)})`.
        """
        return cut_bands(self.problem, *self.bands(beta), width)

    @renamed_keywords(t_end="t1")
    def forecast(self, t1: float, beta: int | None = None, n_times: int = 200):
        """The forecast band from the samples of a saved β (default: the last run): every
        sample's forecast to the end time `t1`, then their mean and standard deviation
        per time.

        **Returns:** `(times, mean (n_times, D), std (n_times, D))`.
        """
        beta = int(self.betas[self._beta_index(beta)])
        if beta not in self.unknown_samples:
            raise ValueError(
                f"β = {beta} kept no samples; list it in `save_betas` (kept: "
                f"{sorted(self.unknown_samples)})."
            )
        samples = self.unknown_samples[beta]
        flat = jax.tree.map(
            lambda a: jnp.asarray(a[self.finite]).reshape(-1, *a.shape[2:]), samples
        )
        # the problem closed over, not traced: its forecast checks `t1` against its times
        forecasts = jax.jit(jax.vmap(lambda u: self.problem.forecast(u, t1, n_times)))
        times, states = forecasts(flat)
        return np.asarray(times[0]), np.asarray(states.mean(0)), np.asarray(states.std(0))


class _Whitening(eqx.Module):
    """X = m + L̃⁻ᵀ·D^{−1/2}·z with H = L̃·D·L̃ᵀ the Gauss–Newton Hessian of A₀ at the
    chains' mean m: a linear change of variables under which a near-Gaussian posterior is
    near N(0, I), so one step size fits every direction (the Laplace approximation as
    the sampler's metric, in O(N·D²) per evaluation instead of a dense mass matrix)."""

    problem: AbstractProblem  # banded: `banded_shape` not None
    factor: BlockFactor
    states: Array
    params: Array
    padding: Array

    def __init__(self, problem, unravel, rf, prior, positions):
        finite = jnp.all(jnp.isfinite(positions), axis=1, keepdims=True)
        total = jnp.sum(jnp.where(finite, positions, 0), axis=0)
        mean = unravel(total / jnp.maximum(jnp.sum(finite, dtype=total.dtype), 1))
        (diagonal, off, border, corner), _ = _banded_hessian(problem, mean, rf, prior, True)
        # A ridge far below the curvature keeps directions the data leave flat invertible;
        # any invertible factor samples the same distribution.
        relative = max(1e-10, 100 * float(jnp.finfo(diagonal.dtype).eps))
        ridge = relative * jnp.max(jnp.abs(jax.vmap(jnp.diag)(diagonal)))
        eye = jnp.eye(diagonal.shape[1], dtype=diagonal.dtype)[None]
        eye_p = jnp.eye(corner.shape[0], dtype=corner.dtype)
        self.problem = problem
        self.factor = factor(diagonal + ridge * eye, off, border, corner + ridge * eye_p)
        self.states, self.params = problem.to_banded(mean)
        live = problem.to_banded(problem.from_banded(jnp.ones_like(self.states), self.params))[0]
        self.padding = (live == 0).astype(self.states.dtype)

    def _split(self, z):
        n, d = self.states.shape
        return z[: n * d].reshape(n, d), z[n * d :]

    def unknowns(self, z):
        dx, dtheta = self.factor.colour(*self._split(z))
        return self.problem.from_banded(self.states + dx, self.params + dtheta)

    def coordinates(self, unknowns):
        states, params = self.problem.to_banded(unknowns)
        z_states, z_params = self.factor.whiten(states - self.states, params - self.params)
        return jnp.concatenate([jnp.ravel(z_states * (1 - self.padding)), z_params])

    def log_density_extra(self, z):
        # padding slots are not unknowns: a standard normal keeps them proper
        return -0.5 * jnp.sum((self._split(z)[0] * self.padding) ** 2)


class _Identity(eqx.Module):
    unravel: Callable

    def unknowns(self, z):
        return self.unravel(z)

    def coordinates(self, unknowns):
        return ravel_pytree(unknowns)[0]

    def log_density_extra(self, z):
        return 0.0


def _a0(problem, rf, prior, u):
    return problem.unnormalised_action(u, rf) + (0.0 if prior is None else prior(u))


@eqx.filter_jit
def _sample_beta(problem, unravel, rf, positions, key, prior, box, settings):
    """One β: window adaptation then `n_samples` draws, every chain vmapped; positions and
    samples are flat unknowns (n_chains, size), inside `box` (flat (lower, upper, the
    same widened by a margin), or None)."""
    kernel_name, n_warmup, n_samples, n_steps, target, precondition = settings
    import blackjax

    algorithm = getattr(blackjax, kernel_name)
    if precondition:
        chart = _Whitening(problem, unravel, rf, prior, positions)
        chart_ok = jnp.all(jnp.isfinite(chart.factor.chol)) & jnp.all(
            jnp.isfinite(chart.factor.chol_theta)
        )
    else:
        chart, chart_ok = _Identity(unravel), jnp.array(True)

    def log_density(z):
        u = chart.unknowns(z)
        if box is not None:
            # The target is cut to the box: −inf outside, so HMC rejects a trajectory
            # that leaves it and NUTS ends the tree there (a divergence). The margin keeps
            # a start on a bound inside after the whitening's round trip; A₀ is evaluated
            # at the point clipped into the box, which is what is drawn: outside, the
            # model may be NaN (a negative rate), whose gradient would leak through the
            # `where`.
            y = ravel_pytree(u)[0]
            inside = jnp.all((y >= box[2]) & (y <= box[3]))
            u = unravel(jnp.clip(y, box[0], box[1]))
        value = problem.log_jacobian(u) - _a0(problem, rf, prior, u) + chart.log_density_extra(z)
        return value if box is None else jnp.where(inside, value, -jnp.inf)

    extra = {"num_integration_steps": n_steps} if kernel_name == "hmc" else {}
    warmup = blackjax.window_adaptation(
        algorithm, log_density, target_acceptance_rate=target, **extra
    )
    kernel = algorithm.build_kernel()

    def chain(key, position):
        k_warm, k_draw = jr.split(key)
        z = chart.coordinates(unravel(position))
        (state, parameters), _ = warmup.run(k_warm, z, num_steps=n_warmup)
        step_size = parameters["step_size"]
        inverse_mass = parameters["inverse_mass_matrix"]

        def draw(state, k):
            state, info = kernel(k, state, log_density, step_size, inverse_mass, **extra)
            x = ravel_pytree(chart.unknowns(state.position))[0]
            if box is not None:
                x = jnp.clip(x, box[0], box[1])
            return state, (x, info.acceptance_rate, info.num_integration_steps)

        state, (samples, acceptance, steps) = jax.lax.scan(draw, state, jr.split(k_draw, n_samples))
        return samples, jnp.mean(acceptance), step_size, jnp.sum(steps)

    return *jax.vmap(chain)(jr.split(key, positions.shape[0]), positions), chart_ok


@eqx.filter_jit
def _statistics(problem, unravel, rf, samples, prior):
    """⟨A₀⟩ and its spread, means, standard deviations, ESS and R̂ of finite chains'
    samples (n_chains, n_samples, size)."""
    flat = samples.reshape(-1, samples.shape[-1])

    actions = jax.lax.map(lambda y: _a0(problem, rf, prior, unravel(y)), flat, batch_size=256)
    import blackjax

    ess = blackjax.ess(samples, chain_axis=0, sample_axis=1)
    rhat = (
        blackjax.rhat(samples, chain_axis=0, sample_axis=1)
        if samples.shape[0] > 1
        else (jnp.full(samples.shape[-1], jnp.nan, samples.dtype))
    )
    return jnp.mean(actions), jnp.std(actions), jnp.mean(flat, 0), jnp.std(flat, 0), ess, rhat


def pamc(
    problem: AbstractProblem,
    schedule: AnnealSchedule,
    n_chains: int,
    key: PRNGKeyArray,
    n_samples: int = 200,
    *,
    n_warmup: int = 200,
    kernel: str = "nuts",
    num_integration_steps: int = 16,
    target_acceptance: float = 0.8,
    init: AnnealResult | PyTree[ArrayLike] | None = None,
    betas: Sequence[int] | None = None,
    save_betas: Sequence[int] | None = None,
    prior: Callable[[PyTree[Array]], Scalar] | None = None,
    precondition: bool | None = None,
    throw: bool = True,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
) -> PAMCResult:
    r"""Precision annealing Monte Carlo (Fang, Wong, Hao, Ty & Abarbanel, Phys. Rev.
    Research 2, 013050, 2020): sample P(X | Y) ∝ exp(−A₀(X; R_f)) at each β of the
    schedule by Hamiltonian Monte Carlo, starting each β's chains from the previous β's
    last samples, so that the chains follow the distribution as R_f grows, as annealing
    follows its minima.

    The kernels (NUTS, or HMC with a fixed number of leapfrog steps) and their step-size
    and diagonal mass adaptation (Stan's window adaptation, `n_warmup` steps at every β)
    are blackjax's; every chain adapts and draws on its own, all of them vmapped in one
    compiled program per β (one compile for the whole schedule). A₀ is the problem's
    [`deepest.AbstractProblem.unnormalised_action`][]; parameters have a flat prior in
    the reported quantities unless `prior` is given.

    A problem with a box ([`deepest.AbstractProblem.bounds`][]: an assimilation's
    `bounds=` and `state_bounds=`) has its target cut to it: the log density is −inf
    outside, so a leapfrog trajectory that leaves the box is rejected (HMC) or ends
    there (NUTS, as a divergence), and every draw lies inside. Starting positions are
    clipped into the box. (A sliver 1e-9 of the box's width wide, √ε in float32, is kept
    outside it at the density of its edge, each draw there clipped onto the bound: a
    start on a bound stays inside after the whitening's rounding.) Near an active bound
    NUTS keeps the part of each tree inside the box; HMC loses every trajectory that
    crosses it, so its adaptation shortens the step far below the posterior's scale and
    it mixes poorly: prefer the default `kernel="nuts"` there.

    **Arguments:**

    - `problem`: the problem (e.g. [`deepest.Assimilation`][]).
    - `schedule`: the [`deepest.AnnealSchedule`][] of R_f.
    - `n_chains`: the number of chains (≥ 1; R̂ needs 2).
    - `key`: a PRNG key.
    - `n_samples`: draws kept per chain and β.
    - `n_warmup`: adaptation steps per chain and β.
    - `kernel`: "nuts" (default) or "hmc" (a fixed number of leapfrog steps: cheaper per
      draw, but a trajectory near a multiple of the period of a whitened Gaussian,
      2π, mixes poorly).
    - `num_integration_steps`: leapfrog steps per HMC draw.
    - `target_acceptance`: the adaptation's target acceptance rate.
    - `init`: where the first β's chains start: an [`deepest.AnnealResult`][] (its minima
      of that β where saved, else its final ones; chains cycle through its paths), or
      unknowns with a leading axis (one per chain, or cycled); default: draws of
      `problem.init`.
    - `betas`: the β indices to run, increasing (default: all of the schedule).
    - `save_betas`: β's whose samples are kept (default: the last run).
    - `prior`: −log p of the unknowns (up to a constant), added to A₀.
    - `precondition`: sample in whitened coordinates X = m + L⁻ᵀz, with L L ᵀ the
      Gauss–Newton Hessian of A₀ at the chains' mean at the start of each β (the
      block-tridiagonal factor, O(N·D²) per evaluation): the posterior of a large R_f is
      a narrow valley along the model's trajectories that a diagonal mass matrix cannot
      follow. Exact whatever the factor (a linear change of variables). Default: True for
      banded problems ([`deepest.Assimilation`][]), False otherwise.
    - `throw`: raise if every chain failed (turned non-finite, or the whitening factor
      is not positive definite): an `equinox.EquinoxRuntimeError` naming the
      [`deepest.RESULTS`][] message; with `False` sampling stops at that β and the result
      is returned with its codes. Some chains' failures are always returned as codes.
    - `progress`: show a tqdm bar over the β's, with the last β's R_f, acceptance, step
      size, smallest ESS, largest R̂ and time (the first β of a call includes the
      compile).
    - `checkpoint`: a folder to write, after every β, what continues the run exactly
      (`pamc-checkpoint.npz`, atomically: the chains' positions, the PRNG key, the
      records so far).
    - `resume`: a folder holding a checkpoint of this same run (same problem, key, `init`,
      schedule, β's and settings): sampling goes on from the β after its last one and
      ends bit for bit as the uninterrupted run would (only the timings differ). A
      checkpoint of another run is refused, naming what differs.

    Ctrl-C (SIGINT) or [`deepest.annealing.INTERRUPT`][] stops the run after the β it is
    sampling and returns the β's finished (`partial=True`, with a warning); a second
    Ctrl-C raises at once.

    **Returns:** a [`deepest.PAMCResult`][].

    **Example:**

        result = deepest.pamc(problem, schedule, n_chains=64, key=jr.key(0), n_samples=200)
        result.action0_mean  # ⟨A₀⟩ per β, beside the action levels of `anneal`
    """
    if not isinstance(problem, AbstractProblem):
        raise TypeError(
            f"`problem` must be a deepest.AbstractProblem; got {type(problem).__name__}."
        )
    if not isinstance(schedule, AnnealSchedule):
        raise TypeError(
            f"`schedule` must be a deepest.AnnealSchedule; got {type(schedule).__name__}."
        )
    for name, value, low in (
        ("n_chains", n_chains, 1),
        ("n_samples", n_samples, 4),
        ("n_warmup", n_warmup, 0),
        ("num_integration_steps", num_integration_steps, 1),
    ):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"`{name}` must be an integer ≥ {low}; got {value!r}.")
    if kernel not in _KERNELS:
        raise ValueError(f"`kernel` must be one of {sorted(_KERNELS)}; got {kernel!r}.")
    if not 0 < target_acceptance < 1:
        raise ValueError(f"`target_acceptance` must lie in (0, 1); got {target_acceptance}.")
    if resume is not None and not os.path.isdir(resume):
        raise ValueError(f"`resume`: {resume} is not a folder.")
    if checkpoint is not None and os.path.exists(checkpoint) and not os.path.isdir(checkpoint):
        raise ValueError(f"`checkpoint`: {checkpoint} is a file, not a folder.")
    problem.action_counts  # noqa: B018  (raises for a problem without A₀)
    problem.check_rf(schedule.rf0)
    if precondition is None:
        precondition = problem.banded_shape is not None
    rf_table = np.asarray(schedule.rf, dtype=float)
    betas = np.arange(schedule.n_beta) if betas is None else np.asarray(betas)
    if (
        betas.ndim != 1
        or not betas.size
        or not np.issubdtype(betas.dtype, np.integer)
        or np.any(np.diff(betas) <= 0)
        or betas[0] < 0
        or betas[-1] >= schedule.n_beta
    ):
        raise ValueError(
            f"`betas` must be increasing β indices in [0, {schedule.n_beta}); got {betas!r}."
        )
    save_betas = [int(betas[-1])] if save_betas is None else [int(b) for b in save_betas]
    unknown = sorted(set(save_betas) - set(betas.tolist()))
    if unknown:
        raise ValueError(f"`save_betas` names β's that are not run: {unknown}.")

    dtype = jnp.result_type(float)
    k_init, key = jr.split(key)
    template = problem.init(jr.key(0))
    _, unravel = ravel_pytree(template)
    if init is None:
        starts = jax.vmap(lambda k: ravel_pytree(problem.init(k))[0])(jr.split(k_init, n_chains))
    else:
        if isinstance(init, AnnealResult):
            unknowns, _ = _check_result(problem, init)
            unknowns = init.saved.get(int(betas[0]), unknowns)
        else:
            unknowns, _ = _check_result(problem, init)
        flat = jax.vmap(lambda u: ravel_pytree(u)[0])(jax.tree.map(jnp.asarray, unknowns))
        starts = flat[np.arange(n_chains) % flat.shape[0]]
    positions = jnp.asarray(starts, dtype)
    if precondition and problem.banded_shape is None:
        raise ValueError(
            "`precondition=True` needs a banded problem (an assimilation); pass "
            "`precondition=False` for this one."
        )
    box = flat_box(problem, template)
    if box is not None:
        lower, upper = (b.astype(dtype) for b in box)
        positions = jnp.clip(positions, lower[None], upper[None])
        relative = max(_AT_BOUND, float(np.sqrt(np.finfo(dtype).eps)))
        near_low, near_high = bound_margins(lower, upper, relative)
        box = (lower, upper, lower - near_low, upper + near_high)
    settings = (
        kernel,
        int(n_warmup),
        int(n_samples),
        int(num_integration_steps),
        float(target_acceptance),
        bool(precondition),
    )

    fps = _fingerprints(
        problem, key, positions, rf_table, betas, save_betas, n_chains, settings, prior
    )
    run = {
        "finite": np.ones(n_chains, bool),
        "codes": np.full(n_chains, codes_of(RESULTS.successful)),
        "records": {k: [] for k in _RECORDS},
        "views": [],
        "samples": {},
        "unknowns": {},
        "done": 0,
        "leapfrog_steps": 0,
        "first_beta_time": 0.0,
        "run_time": 0.0,
    }
    if resume is not None:
        drawn = jax.ShapeDtypeStruct((n_chains, int(n_samples), positions.shape[1]), dtype)
        shapes = (template, drawn)
        key, positions = _load_checkpoint(resume, fps, run, key, problem, unravel, shapes)
    run_before, start, partial = run["run_time"], time.perf_counter(), False
    from tqdm.auto import tqdm

    first = run["done"]
    bar = tqdm(total=len(betas), initial=first, desc="pamc", unit="β", disable=not progress)
    try:
        with Interruption() as interruption:
            for i in range(first, len(betas)):
                b = int(betas[i])
                if i == first:
                    bar.set_postfix_str(f"β {b}: compiling and sampling", refresh=True)
                rf = jnp.asarray(rf_table[b], dtype)
                key, k_beta = jr.split(key)
                t0 = time.perf_counter()
                # blackjax's adaptation schedule mixes dtypes: trace it under the default
                # rules whatever the user's (e.g. strict promotion in tests)
                with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
                    samples, acceptance, step_size, steps, chart_ok = _sample_beta(
                        problem, unravel, rf, positions, k_beta, prior, box, settings
                    )
                samples = jax.block_until_ready(samples)
                run["leapfrog_steps"] += int(np.sum(np.asarray(steps)))
                if i == 0:
                    run["first_beta_time"] = time.perf_counter() - t0
                finite, codes, records = run["finite"], run["codes"], run["records"]
                finite &= np.asarray(jnp.all(jnp.isfinite(samples), axis=(1, 2)))
                finite &= np.isfinite(np.asarray(step_size))
                codes = run["codes"] = np.where(finite, codes, codes_of(RESULTS.nonfinite))
                if not bool(chart_ok):
                    codes[:] = codes_of(RESULTS.not_positive_definite)
                if not bool(chart_ok) or not finite.any():
                    check_throw(
                        throw,
                        False,
                        results_of(codes),
                        f"pamc: every chain failed at β = {b} (R_f = {rf_table[b]})",
                    )
                    _record_failure(
                        records, run["views"], problem, unravel, samples, acceptance, step_size
                    )
                    betas = betas[: i + 1]
                    break
                kept = samples[finite]
                with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
                    statistics = _statistics(problem, unravel, rf, kept, prior)
                for name, value in zip(_RECORDS, (*statistics, acceptance, step_size)):
                    records[name].append(np.asarray(value))
                run["views"].append(_views(problem, unravel, kept))
                if b in save_betas:
                    run["unknowns"][b] = jax.device_get(jax.vmap(jax.vmap(unravel))(samples))
                    run["samples"][b] = jax.device_get(_sample_views(problem, unravel, samples))
                # a flagged chain continues from a finite chain's last sample, uncounted
                last = samples[:, -1]
                donor = np.nonzero(finite)[0][np.arange(n_chains) % finite.sum()]
                positions = jnp.where(jnp.asarray(finite)[:, None], last, last[donor])
                run["done"] = i + 1
                if checkpoint is not None:
                    run["run_time"] = run_before + time.perf_counter() - start
                    _save_checkpoint(checkpoint, run, key, positions, fps)
                bar.update(1)
                bar.set_postfix_str(
                    _progress_text(b, rf_table[b], run, finite, time.perf_counter() - t0),
                    refresh=True,
                )
                if interruption.hit and i + 1 < len(betas):
                    partial, betas = True, betas[: i + 1]
                    warnings.warn(
                        f"PAMC interrupted after β = {b}: returning the β's finished "
                        "(result.partial is True)"
                        + (f"; resume from {checkpoint}." if checkpoint is not None else "."),
                        stacklevel=2,
                    )
                    break
    finally:
        bar.close()
    run_time = run_before + time.perf_counter() - start
    stacked = {k: np.stack(v) for k, v in run["records"].items()}
    tree = lambda a: jax.vmap(unravel)(jnp.asarray(a))  # noqa: E731
    ess = stacked["ess"]
    views = run["views"]
    return PAMCResult(
        betas=betas,
        rf=rf_table[betas],
        action0_mean=stacked["a_mean"],
        action0_std=stacked["a_std"],
        mean=jax.device_get(tree(stacked["mean"])),
        std=jax.device_get(tree(stacked["std"])),
        mc_error=jax.device_get(tree(stacked["std"] / np.sqrt(np.maximum(ess, 1e-300)))),
        ess=jax.device_get(tree(ess)),
        rhat=jax.device_get(tree(stacked["rhat"])),
        views={k: _stack([v[k] for v in views]) for k in views[0]},
        acceptance=stacked["acc"],
        step_size=stacked["step"],
        result=results_of(run["codes"]),
        samples=run["samples"],
        unknown_samples=run["unknowns"],
        stats={
            "run_time": run_time,
            "first_beta_time": run["first_beta_time"],
            "leapfrog_steps": run["leapfrog_steps"],
        },
        problem=problem,
        partial=partial,
    )


def _record_failure(records, views, problem, unravel, samples, acceptance, step_size):
    """The records of a β at which every chain failed: NaN statistics."""
    size = samples.shape[-1]
    nan = np.full(size, np.nan, samples.dtype)
    for name, value in zip(_RECORDS, (nan[0], nan[0], nan, nan, nan, nan, acceptance, step_size)):
        records[name].append(np.asarray(value))
    views.append(_views(problem, unravel, jnp.full((1, 1, size), jnp.nan, samples.dtype)))


def _stack(trees):
    return jax.tree.map(lambda *a: np.stack(a), *trees)


@eqx.filter_jit
def _views_of(problem, unravel, samples):
    flat = samples.reshape(-1, samples.shape[-1])
    unknowns = jax.vmap(unravel)(flat)
    views = problem.views(unknowns)
    return {
        **jax.tree.map(lambda a: jnp.mean(a, 0), views),
        **{f"{k}_std": jax.tree.map(lambda a: jnp.std(a, 0), v) for k, v in views.items()},
    }


@eqx.filter_jit
def _sample_views(problem, unravel, samples):
    """The problem's views of every draw (n_chains, n_samples, size), shaped
    (n_chains, n_samples, …)."""
    n_chains, n_samples, size = samples.shape
    views = problem.views(jax.vmap(unravel)(samples.reshape(-1, size)))
    return jax.tree.map(lambda a: a.reshape(n_chains, n_samples, *a.shape[1:]), views)


def _views(problem, unravel, samples):
    """The problem's views (e.g. paths, parameters θ) averaged over the samples, and their
    standard deviations (`…_std`): statistics of θ, not θ of the statistics."""
    return jax.device_get(_views_of(problem, unravel, samples))


def _rf_text(rf) -> str:
    rf = np.asarray(rf)
    return f"{float(rf):.4g}" if rf.ndim == 0 else "[" + ", ".join(f"{x:.4g}" for x in rf) + "]"


def _finite(values, reduce) -> float:
    """`reduce` (np.min, np.max) of the finite `values`; NaN if there are none (a β at
    which every chain failed, R̂ of one chain)."""
    values = np.ravel(values)
    values = values[np.isfinite(values)]
    return float(reduce(values)) if values.size else float("nan")


def _extreme(tree, j: int, reduce) -> float:
    """`reduce` of the finite values of every leaf of `tree` at β index `j`."""
    return _finite(
        np.concatenate([np.ravel(np.asarray(a)[j]) for a in jax.tree.leaves(tree)]), reduce
    )


def _progress_text(beta, rf, run, finite, seconds) -> str:
    """The progress bar's line of the β just finished."""
    records = run["records"]
    ess, rhat = _finite(records["ess"][-1], np.min), _finite(records["rhat"][-1], np.max)
    return (
        f"β {beta} (R_f {_rf_text(rf)}): acceptance "
        f"{np.mean(records['acc'][-1][finite]):.2f}, step size "
        f"{np.mean(records['step'][-1][finite]):.3g}, min ESS {ess:.0f}, max R̂ {rhat:.3f}, "
        f"{seconds:.1f} s"
    )


def _digest(*arrays) -> str:
    """SHA-256 of arrays with their shapes and dtypes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(f"{a.dtype}:{a.shape};".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _fingerprints(problem, key, positions, rf_table, betas, save_betas, n_chains, settings, prior):
    """What a checkpoint must share with the run that resumes it, part by part."""
    names = ("kernel", "n_warmup", "n_samples", "num_integration_steps", "target_acceptance")
    return {
        "problem": problem_digest(problem),
        "key": _digest(jr.key_data(key)),
        "initial positions": _digest(positions),
        "schedule": _digest(rf_table),
        "betas": [int(b) for b in betas],
        "save_betas": sorted(set(save_betas)),
        "settings": {
            **dict(zip(names, settings)),
            "precondition": settings[-1],
            "prior": prior is not None,
        },
        "chains": {"n_chains": int(n_chains), "dtype": str(positions.dtype)},
    }


def _leaves(tree, prefix: str) -> dict:
    return {f"{prefix}/{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(tree))}


def _from_leaves(arrays: dict, prefix: str, treedef):
    leaves = [arrays[f"{prefix}/{i}"] for i in range(treedef.num_leaves)]
    return jax.tree.unflatten(treedef, leaves)


def _save_checkpoint(folder, run: dict, key, positions, fps: dict) -> str:
    """Write what continues the run exactly after its finished β's to
    `folder/pamc-checkpoint.npz`, atomically."""
    os.makedirs(folder, exist_ok=True)
    arrays = {
        "positions": np.asarray(positions),
        "key": np.asarray(jr.key_data(key)),
        "finite": run["finite"],
        "codes": run["codes"],
        **{f"records/{k}": np.stack(v) for k, v in run["records"].items()},
        **_leaves(_stack(run["views"]), "views"),
    }
    for b in run["samples"]:
        arrays.update(_leaves(run["samples"][b], f"samples/{b}"))
        arrays.update(_leaves(run["unknowns"][b], f"unknown_samples/{b}"))
    meta = {
        "version": package_version(),
        "fingerprints": fps,
        "kept": sorted(run["samples"]),
        **{k: run[k] for k in ("done", "leapfrog_steps", "first_beta_time", "run_time")},
    }
    return save_npz(os.path.join(folder, PAMCResult.checkpoint_name), arrays, meta)


def _load_checkpoint(folder, fps: dict, run: dict, key, problem, unravel, shapes):
    """Fill `run` from the checkpoint in `folder` after checking its fingerprints.

    **Returns:** `(key, positions)` to go on from.
    """
    path = os.path.join(os.fspath(folder), PAMCResult.checkpoint_name)
    if not os.path.isfile(path):
        raise ValueError(
            f"{folder} holds no PAMC checkpoint ({PAMCResult.checkpoint_name}): nothing to resume."
        )
    try:
        arrays, meta = load_npz(path)
    except Exception as e:  # a damaged file: say so, in one line
        raise ValueError(f"{path} is not a readable PAMC checkpoint: {e}") from None
    if "fingerprints" not in meta or "done" not in meta:
        raise ValueError(f"{path} is not a PAMC checkpoint (it has no run fingerprints).")
    check_fingerprints(
        folder,
        meta,
        fps,
        "PAMC checkpoint",
        "Resume it with the arguments it was started with, or start afresh.",
    )
    template, samples = shapes
    one = jax.ShapeDtypeStruct((1, 1, samples.shape[-1]), samples.dtype)
    views_def = jax.tree.structure(eqx.filter_eval_shape(_views_of, problem, unravel, one))
    samples_def = jax.tree.structure(
        eqx.filter_eval_shape(_sample_views, problem, unravel, samples)
    )
    try:
        done = int(meta["done"])
        views = _from_leaves(arrays, "views", views_def)
        loaded = {
            "finite": np.asarray(arrays["finite"], bool),
            "codes": np.asarray(arrays["codes"]),
            "records": {k: list(arrays[f"records/{k}"]) for k in _RECORDS},
            "views": [jax.tree.map(lambda a, j=j: a[j], views) for j in range(done)],
            "samples": {b: _from_leaves(arrays, f"samples/{b}", samples_def) for b in meta["kept"]},
            "unknowns": {
                b: _from_leaves(arrays, f"unknown_samples/{b}", jax.tree.structure(template))
                for b in meta["kept"]
            },
            "done": done,
            "leapfrog_steps": int(meta["leapfrog_steps"]),
            "first_beta_time": float(meta["first_beta_time"]),
            "run_time": float(meta["run_time"]),
        }
        positions, key_data = arrays["positions"], arrays["key"]
    except KeyError as e:
        raise ValueError(f"{path} is not a whole PAMC checkpoint: it lacks {e}.") from None
    run.update(loaded)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jr.wrap_key_data(jnp.asarray(key_data), impl=jr.key_impl(key))
    else:
        key = jnp.asarray(key_data)
    return key, jnp.asarray(positions)
