"""Uncertainty estimates: selected inversion, the Laplace approximation, and PAMC.

1. Selected inversion (`deepest.selected_inversion`), linear in N: random symmetric
   positive definite bordered block-tridiagonal matrices H = JᵀJ + I (d = 20 states per
   time, p = 1 parameter; J's local blocks drawn at random, assembled with numpy, no
   dense matrix) at N = 161, 641, 2561 times. The jitted call is timed (compile excluded
   by a warm-up call; best of `--repeats`, `block_until_ready`); the ratio
   time(2561)/time(161) is set beside the linear ideal 2561/161. At N = 161 only, the
   diagonal blocks are checked against `np.linalg.inv` of the dense H (max abs error
   relative to the inverse's max abs entry).
2. Laplace against annealing on the shipped Lorenz-96 L = 12 config (D = 20, N = 161,
   the forcing estimated): `deepest.anneal` of `--paths` paths with the config's
   settings, then `deepest.laplace(problem, result)` of every path. Laplace is timed on
   its second call (its compile excluded, reported apart); annealing by its
   `stats["run_time"]`. Both per path. From the same Laplace, at the path of largest
   `log_mass`: the fraction of the truth's unobserved components (every time) inside
   mean ± 2σ, and whether the forcing's ±2σ band covers the true 8.17.
3. PAMC effective samples per second on a small linear-Gaussian assimilation (D = 3,
   x' = A x, 40 times on [0, 4], component 0 observed with noise 0.2, no parameters):
   `deepest.pamc` of 64 chains (NUTS, whitened, 200 warm-up and 200 draws) at β = 5 of
   the schedule rf0 = 1, α = 2, started from `deepest.anneal`'s minima (banded
   Levenberg–Marquardt). Its clock: a second, identical call's `stats["run_time"]`
   (compiled program reused); the first call's `run_time` and `first_beta_time` are
   reported too (`first_beta_time` is the first β's wall time, compile included, so with a
   single β it covers the sampling as well). ESS over the path's coordinates (min,
   median) from `result.ess`. Baseline: blackjax NUTS with `window_adaptation` (same
   warm-up and draws), ONE chain at a time, `--serial-chains` chains one after another,
   on the same log density −A₀(X; R_f) in the unwhitened coordinates, jitted; compile
   excluded by a warm-up chain; ESS by `blackjax.ess` of the stacked chains.
4. Calibration of Laplace's bands on the L = 12 twin against R_f: the schedule extended to
   45 β (R_f up to 1.8e7), 8 paths, Laplace at the best path of β 30 (the shipped
   config's last), 35, 40 and 44: the fraction of the unobserved truth inside ±2σ, the
   RMS error, the mean σ, the forcing ± σ and whether its ±2σ band covers 8.17; for the
   shipped trapezoid rule and for "simpson_hermite" (fourth order).
5. PAMC on Lorenz-96 (`pamc96`): on L = 12, 16 chains of NUTS at β 28–30 from the annealed
   minima against Laplace at β 30 (the states' means within 4 Monte Carlo errors, the
   forcing, the ratio of standard deviations, ⟨A₀⟩ against the Gaussian's A₀* + n/2); on
   L = 8, ⟨A₀⟩ per β (12, 16, …, 30) beside the annealed minima's levels in A₀ units.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_uncertainty.py [--quick] [--paths 16]
        [--repeats 3] [--serial-chains 4] [--skip PART ...]
"""

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # unpinned OpenBLAS slows numpy/scipy
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import blackjax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import yaml  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import deepest  # noqa: E402
from deepest.experiments import resolve  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRUE_FORCING = 8.17


def load(name, problem=None, **anneal):
    """A shipped config's problem and schedule, with `anneal` (and `problem`) entries set."""
    with open(os.path.join(ROOT, "configs", name)) as f:
        config = yaml.safe_load(f)
    config["anneal"].update(anneal)
    config["problem"].update(problem or {})
    config = resolve(config, kind="anneal")
    problem, schedule, _, _ = config.build()
    return problem, schedule, config


# -- 1. selected inversion ---------------------------------------------------------------


def random_blocks(n, d, p, rng):
    """The blocks of H = JᵀJ + I, with J's rows: per time n a local block E_n (d × d) on
    x_n, and per interval n a block [A_n, B_n, c_n] on (x_n, x_{n+1}, θ)."""
    s = 1 / np.sqrt(d)
    e = rng.standard_normal((n, d, d)) * s
    a = rng.standard_normal((n - 1, d, d)) * s
    b = rng.standard_normal((n - 1, d, d)) * s
    c = rng.standard_normal((n - 1, d, p)) * s
    gram = lambda x, y: np.einsum("nri,nrj->nij", x, y)  # noqa: E731
    diagonal = gram(e, e) + np.eye(d)
    diagonal[:-1] += gram(a, a)
    diagonal[1:] += gram(b, b)
    off = gram(a, b)  # H[n, n + 1]
    border = np.zeros((n, d, p))
    border[:-1] += gram(a, c)
    border[1:] += gram(b, c)
    corner = gram(c, c).sum(0) + np.eye(p)
    return diagonal, off, border, corner


def dense(diagonal, off, border, corner):
    n, d, _ = diagonal.shape
    p = corner.shape[0]
    t = np.zeros((n, d, n, d))
    i = np.arange(n)
    t[i, :, i, :] = diagonal
    t[i[:-1], :, i[1:], :] = off
    t[i[1:], :, i[:-1], :] = np.swapaxes(off, 1, 2)
    b = border.reshape(n * d, p)
    return np.block([[t.reshape(n * d, n * d), b], [b.T, corner]])


def selected_inversion_rows(sizes, repeats, d=20, p=1):
    rng = np.random.default_rng(0)
    fn = jax.jit(deepest.selected_inversion)
    rows, error = [], None
    for n in sizes:
        blocks = random_blocks(n, d, p, rng)
        args = [jnp.asarray(x) for x in blocks]
        out = jax.block_until_ready(fn(*args))  # compile
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - start)
        if n == sizes[0]:
            inverse = np.linalg.inv(dense(*blocks))
            k = np.arange(n)
            blocks_inv = inverse[: n * d, : n * d].reshape(n, d, n, d)[k, :, k, :]
            error = np.max(np.abs(np.asarray(out.diagonal) - blocks_inv)) / np.max(np.abs(inverse))
            corner_err = np.max(np.abs(np.asarray(out.corner) - inverse[n * d :, n * d :]))
            error = max(error, corner_err / np.max(np.abs(inverse)))
        rows.append((n, min(times), bool(out.positive_definite)))
    return rows, error


# -- 2. Laplace against annealing on L = 12 ----------------------------------------------


def laplace_rows(n_paths, n_beta):
    overrides = {} if n_beta is None else {"n_beta": n_beta}
    problem, schedule, config = load("lorenz96_L12.yaml", **overrides)
    key = jr.key(config["anneal"]["seed"])
    result = deepest.anneal(problem, schedule, n_paths, key, progress=False)

    start = time.perf_counter()
    lap = deepest.laplace(problem, result)
    first = time.perf_counter() - start
    start = time.perf_counter()
    lap = deepest.laplace(problem, result)
    laplace_time = time.perf_counter() - start

    j = int(np.nanargmax(lap.log_mass))  # index into lap's arrays
    best = int(lap.paths[j])  # index into the annealing result
    data = problem.data
    step = problem.steps_per_obs
    truth = np.asarray(data.truth)
    unobserved = [i for i in range(truth.shape[1]) if i not in data.observed]
    mean = np.asarray(lap.unknowns["path"][j])[::step]
    std = np.asarray(lap.paths_std[j])[::step]
    inside = np.abs(truth - mean) <= 2 * std
    coverage = float(np.mean(inside[:, unobserved]))
    forcing = float(np.ravel(problem.views(lap.unknowns)["params"]["forcing"][j])[0])
    forcing_std = float(np.ravel(lap.params_std["forcing"][j])[0])
    return {
        "n_paths": n_paths,
        "n_beta": schedule.n_beta,
        "anneal_run": result.stats["run_time"],
        "anneal_compile": result.stats["compile_time"],
        "laplace": laplace_time,
        "laplace_first": first,
        "best_mass": best,
        "best_action": result.best,
        "positive": int(np.sum(lap.positive_definite)),
        "coverage": coverage,
        "n_unobserved": len(unobserved),
        "forcing": forcing,
        "forcing_std": forcing_std,
        "forcing_covered": abs(forcing - TRUE_FORCING) <= 2 * forcing_std,
        "rf": float(np.max(lap.rf)),
    }


# -- 3. PAMC against serial blackjax NUTS ------------------------------------------------


def linear_problem():
    a = np.array([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.0, -0.3, -0.2]])
    times = np.linspace(0.0, 4.0, 40)
    x0 = np.array([1.0, 0.0, 0.5])
    truth = np.stack([scipy.linalg.expm(a * t) @ x0 for t in times])
    noise = 0.2
    obs = truth[:, :1] + noise * np.random.default_rng(0).standard_normal((times.size, 1))
    a_j = jnp.asarray(a)
    data = deepest.Observations(times, obs, observed=[0], truth=truth, noise=noise)
    problem = deepest.Assimilation(lambda t, x: a_j @ x, data, rm=1 / noise**2)
    schedule = deepest.AnnealSchedule(rf0=1.0, alpha=2.0, n_beta=6)
    return problem, schedule


def serial_nuts(problem, rf, start, n_chains, n_warmup, n_samples):
    """One chain at a time: blackjax NUTS with window adaptation, jitted, unwhitened."""
    flat0, unravel = ravel_pytree(start)
    rf = jnp.asarray(rf)

    def log_density(z):
        return -problem.unnormalised_action(unravel(z), rf)

    @jax.jit
    def chain(key, z0):
        k_warm, k_draw = jr.split(key)
        warmup = blackjax.window_adaptation(blackjax.nuts, log_density)
        (state, parameters), _ = warmup.run(k_warm, z0, num_steps=n_warmup)
        kernel = blackjax.nuts(log_density, **parameters)

        def draw(state, k):
            state, _ = kernel.step(k, state)
            return state, state.position

        return jax.lax.scan(draw, state, jr.split(k_draw, n_samples))[1]

    start_time = time.perf_counter()
    jax.block_until_ready(chain(jr.key(100), flat0))  # compile + one warm-up chain
    compile_time = time.perf_counter() - start_time
    samples = []
    start_time = time.perf_counter()
    for k in jr.split(jr.key(7), n_chains):
        samples.append(jax.block_until_ready(chain(k, flat0)))
    run_time = time.perf_counter() - start_time
    samples = jnp.stack(samples)  # (chains, samples, dim)
    ess = blackjax.ess(samples, chain_axis=0, sample_axis=1)
    ess_path = np.asarray(unravel(ess)["path"]).ravel()
    return ess_path, run_time, compile_time


def pamc_rows(n_chains, serial_chains, n_warmup, n_samples, n_anneal=8, beta=5):
    problem, schedule = linear_problem()
    result = deepest.anneal(
        problem,
        schedule,
        n_anneal,
        jr.key(0),
        minimiser=deepest.LevenbergMarquardt(),
        progress=False,
    )
    kwargs = dict(n_samples=n_samples, n_warmup=n_warmup, betas=[beta], init=result)
    cold = deepest.pamc(problem, schedule, n_chains, jr.key(1), **kwargs)
    warm = deepest.pamc(problem, schedule, n_chains, jr.key(2), **kwargs)
    ess = np.asarray(warm.ess["path"][0]).ravel()
    start = jax.tree.map(lambda a: a[result.best], result.unknowns)
    s_ess, s_run, s_compile = serial_nuts(
        problem, schedule.rf[beta], start, serial_chains, n_warmup, n_samples
    )
    return {
        "rf": float(schedule.rf[beta]),
        "n_chains": n_chains,
        "serial_chains": serial_chains,
        "dim": ess.size,
        "cold_run": cold.stats["run_time"],
        "cold_compile": cold.stats["first_beta_time"],
        "warm_run": warm.stats["run_time"],
        "warm_compile": warm.stats["first_beta_time"],
        "ess_min": float(np.min(ess)),
        "ess_median": float(np.median(ess)),
        "rhat_max": float(np.nanmax(np.asarray(warm.rhat["path"][0]))),
        "acceptance": float(np.mean(warm.acceptance)),
        "leapfrogs": warm.stats["leapfrog_steps"],
        "serial_run": s_run,
        "serial_compile": s_compile,
        "serial_ess_min": float(np.min(s_ess)),
        "serial_ess_median": float(np.median(s_ess)),
    }


def calibration_rows(discretisation, n_paths, n_beta, betas):
    """Laplace's ±2σ bands at several β of a longer schedule on the L = 12 twin, with
    `discretisation`: the fraction of the unobserved truth inside, the forcing's band."""
    problem, schedule, _ = load(
        "lorenz96_L12.yaml", {"discretisation": discretisation}, n_beta=n_beta, n_paths=n_paths
    )
    result = deepest.anneal(
        problem, schedule, n_paths, jr.key(1), save_betas=betas[:-1], progress=False
    )
    data = problem.data
    truth = np.asarray(data.truth)
    unobserved = [c for c in range(truth.shape[1]) if c not in list(data.observed)]
    step = problem.steps_per_obs
    rows = []
    for beta in betas:
        unknowns = result.saved.get(beta, result.unknowns)
        best = int(np.nanargmin(result.action[beta]))
        lap = deepest.laplace(problem, unknowns, rf=result.rf[beta], paths=best)
        mean = np.asarray(problem.views(lap.unknowns)["paths"][0])[::step, unobserved]
        std = np.asarray(lap.paths_std[0])[::step, unobserved]
        theta = float(problem.views(lap.unknowns)["params"]["forcing"][0])
        sd = float(lap.params_std["forcing"][0])
        rows.append(
            {
                "beta": beta,
                "rf": float(result.rf[beta]),
                "inside": float(np.mean(np.abs(truth[:, unobserved] - mean) <= 2 * std)),
                "rms": float(np.sqrt(np.mean((truth[:, unobserved] - mean) ** 2))),
                "sigma": float(np.mean(std)),
                "forcing": theta,
                "forcing_std": sd,
                "covered": abs(theta - TRUE_FORCING) <= 2 * sd,
            }
        )
    return rows


def pamc_lorenz96_rows(quick):
    """PAMC on the Lorenz-96 configs: at the last β's of L = 12 against Laplace, and ⟨A₀⟩
    per β on L = 8 beside the annealed minima's levels."""
    out = {}
    # L = 12: a single minimum; NUTS at β 28–30 from the annealed minima of β 28
    n_paths, n_chains, n_draws = (4, 4, 20) if quick else (16, 16, 200)
    problem, schedule, _ = load("lorenz96_L12.yaml", n_paths=n_paths)
    last = schedule.n_beta - 1
    betas = [last - 2, last - 1, last]
    result = deepest.anneal(
        problem, schedule, n_paths, jr.key(1), save_betas=betas[:1], progress=False
    )
    lap = deepest.laplace(problem, result)
    i = result.best
    mc = deepest.pamc(
        problem,
        schedule,
        n_chains,
        jr.key(2),
        n_draws,
        n_warmup=n_draws,
        betas=betas,
        init=result,
    )
    z = (mc.mean["path"][-1] - lap.unknowns["path"][i]) / mc.mc_error["path"][-1]
    theta_mc = float(mc.views["params"]["forcing"][-1])
    sd_mc = float(mc.views["params_std"]["forcing"][-1])
    ess_forcing = float(mc.ess["params"]["forcing"][-1])
    theta_lap = float(problem.views(lap.unknowns)["params"]["forcing"][i])
    ratio = np.asarray(mc.std["path"][-1] / lap.paths_std[i])
    out["L12"] = {
        "n_chains": n_chains,
        "draws": n_draws,
        "time": mc.stats["run_time"],
        "inside4": float(np.mean(np.abs(z) <= 4)),
        "zmax": float(np.max(np.abs(z))),
        "forcing_mc": theta_mc,
        "forcing_mc_std": sd_mc,
        "forcing_lap": theta_lap,
        "forcing_lap_std": float(lap.params_std["forcing"][i]),
        "forcing_z": (theta_mc - theta_lap) / (sd_mc / np.sqrt(ess_forcing)),
        "ratio": np.percentile(ratio, [5, 50, 95]),
        "a0": float(mc.action0_mean[-1]),
        "a0_gauss": float(lap.action0[i] + lap.unknowns["path"][i].size / 2),
        "ess": (float(np.min(mc.ess["path"][-1])), float(np.median(mc.ess["path"][-1]))),
        "rhat": float(np.max(mc.rhat["path"][-1])),
        "leapfrogs": mc.stats["leapfrog_steps"],
    }
    # L = 8: several minima at small β; ⟨A₀⟩ per β against the annealed levels (A₀ units)
    n_paths, n_chains, n_draws = (4, 4, 20) if quick else (16, 16, 100)
    problem, schedule, _ = load("lorenz96_L8.yaml", n_paths=n_paths)
    betas = [12, 16, 20, 24, 28, 30] if not quick else [20, 24]
    result = deepest.anneal(
        problem, schedule, n_paths, jr.key(1), save_betas=betas[:1], progress=False
    )
    mc = deepest.pamc(
        problem,
        schedule,
        n_chains,
        jr.key(2),
        n_draws,
        n_warmup=n_draws,
        betas=betas,
        init=result,
    )
    scale = 0.5 * float(problem.action_counts[0])
    size = mc.mean["path"][0].size + 1
    out["L8"] = [
        {
            "beta": int(b),
            "rf": float(mc.rf[k]),
            "a0": float(mc.action0_mean[k]),
            "a0_std": float(mc.action0_std[k]),
            "levels": scale * np.nanpercentile(result.action[b], [0, 50, 100]),
            "rhat": float(np.max(mc.rhat["path"][k])),
            "acceptance": float(np.mean(mc.acceptance[k])),
        }
        for k, b in enumerate(mc.betas)
    ]
    out["L8_half_n"] = size / 2
    out["L8_time"] = mc.stats["run_time"]
    out["L8_chains"] = (n_chains, n_draws)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke size (figures mean nothing)")
    parser.add_argument("--paths", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serial-chains", type=int, default=4)
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["inversion", "laplace", "pamc", "calibration", "pamc96"],
    )
    args = parser.parse_args()
    quick = args.quick
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(
        f"jax {jax.__version__}, blackjax {blackjax.__version__}, deepest {deepest.__version__}\n"
    )
    summary = []

    if "inversion" not in args.skip:
        sizes = [161, 641, 2561]
        rows, error = selected_inversion_rows(sizes, 1 if quick else args.repeats)
        print("| selected inversion, d = 20, p = 1 | N | time (s) | µs per time | pos. def. |")
        print("|---|---|---|---|---|")
        for n, t, pd in rows:
            print(f"| jit(deepest.selected_inversion) | {n} | {t:.4f} | {1e6 * t / n:.1f} | {pd} |")
        ratio = rows[-1][1] / rows[0][1]
        ideal = sizes[-1] / sizes[0]
        print(
            f"\ntime({sizes[-1]}) / time({sizes[0]}) = {ratio:.1f} (linear: {ideal:.1f}); "
            f"diagonal and corner blocks at N = {sizes[0]} against np.linalg.inv: max abs "
            f"error / max abs of the inverse = {error:.1e}\n"
        )
        summary.append(
            (
                "selected inversion",
                f"N {sizes[0]} → {sizes[-1]}: {ratio:.1f}× time "
                f"(ideal {ideal:.1f}×); rel. error {error:.1e}",
            )
        )

    if "laplace" not in args.skip:
        n_paths = 4 if quick else args.paths
        r = laplace_rows(n_paths, 8 if quick else None)
        a_path = r["anneal_run"] / n_paths
        l_path = r["laplace"] / n_paths
        print(
            "| L = 12 (D = 20, N = 161) | paths | β | time per path (s) | total (s) | compile (s) |"
        )
        print("|---|---|---|---|---|---|")
        print(
            f"| deepest.anneal (L-BFGS, config settings) | {n_paths} | {r['n_beta']} | "
            f"{a_path:.3f} | {r['anneal_run']:.2f} | {r['anneal_compile']:.1f} |"
        )
        print(
            f"| deepest.laplace (exact Hessian) | {n_paths} | last (R_f = {r['rf']:.3g}) | "
            f"{l_path:.4f} | {r['laplace']:.3f} | {r['laplace_first'] - r['laplace']:.1f} |"
        )
        print(
            f"\nLaplace / anneal time per path: {l_path / a_path:.3f} "
            f"(anneal / Laplace: {a_path / l_path:.1f}×); positive definite: "
            f"{r['positive']}/{n_paths}"
        )
        print(
            f"path of largest log_mass: {r['best_mass']} (lowest action: {r['best_action']}); "
            f"truth's {r['n_unobserved']} unobserved components inside ±2σ at all times: "
            f"{r['coverage']:.3f} (Gaussian: 0.954)"
        )
        print(
            f"forcing: {r['forcing']:.4f} ± {r['forcing_std']:.4f} (1σ); true "
            f"{TRUE_FORCING} inside ±2σ: {r['forcing_covered']}\n"
        )
        summary.append(
            (
                "Laplace vs anneal (L = 12)",
                f"{l_path:.4f} s vs {a_path:.3f} s per path (ratio {l_path / a_path:.3f})",
            )
        )
        summary.append(
            (
                "Laplace ±2σ coverage",
                f"unobserved {r['coverage']:.3f}; forcing "
                f"{r['forcing']:.3f} ± {r['forcing_std']:.3f}, covers {TRUE_FORCING}: "
                f"{r['forcing_covered']}",
            )
        )

    if "pamc" not in args.skip:
        n_chains = 16 if quick else 64
        serial_chains = 2 if quick else args.serial_chains
        n_warmup = n_samples = 100 if quick else 200
        r = pamc_rows(n_chains, serial_chains, n_warmup, n_samples)
        ours = r["ess_min"] / r["warm_run"], r["ess_median"] / r["warm_run"]
        serial = r["serial_ess_min"] / r["serial_run"], r["serial_ess_median"] / r["serial_run"]
        print(
            f"linear-Gaussian, D = 3, N = 40, β = 5 (R_f = {r['rf']:g}), {r['dim']} path "
            f"coordinates, {n_warmup} warm-up + {n_samples} draws per chain"
        )
        print(
            "| sampler | chains | time (s) | compile (s) | ESS min | ESS median | "
            "ESS/s min | ESS/s median |"
        )
        print("|---|---|---|---|---|---|---|---|")
        print(
            f"| deepest.pamc (NUTS, whitened, vmapped) | {r['n_chains']} | {r['warm_run']:.2f} "
            f"| {r['cold_run'] - r['warm_run']:.1f} | {r['ess_min']:.0f} | "
            f"{r['ess_median']:.0f} | {ours[0]:.0f} | {ours[1]:.0f} |"
        )
        print(
            f"| blackjax NUTS, one chain at a time | {r['serial_chains']} | "
            f"{r['serial_run']:.2f} | {r['serial_compile']:.1f} | {r['serial_ess_min']:.0f} "
            f"| {r['serial_ess_median']:.0f} | {serial[0]:.0f} | {serial[1]:.0f} |"
        )
        print(
            f"\nESS/s ours / serial: min {ours[0] / serial[0]:.1f}×, median "
            f"{ours[1] / serial[1]:.1f}×"
        )
        print(
            f"pamc stats: first call run_time {r['cold_run']:.2f} s, first_beta_time "
            f"{r['cold_compile']:.2f} s; second call run_time {r['warm_run']:.2f} s, "
            f"first_beta_time {r['warm_compile']:.2f} s (the first β's wall time, compile "
            f"included when cold); max R̂ {r['rhat_max']:.3f}, mean acceptance "
            f"{r['acceptance']:.2f}, leapfrog steps {r['leapfrogs']}\n"
        )
        summary.append(
            (
                "PAMC vs serial NUTS ESS/s",
                f"min {ours[0]:.0f} vs {serial[0]:.0f} "
                f"({ours[0] / serial[0]:.1f}×), median {ours[1]:.0f} vs {serial[1]:.0f} "
                f"({ours[1] / serial[1]:.1f}×)",
            )
        )

    if "calibration" not in args.skip:
        n_beta = 14 if quick else 45
        betas = [10, 12, 13] if quick else [30, 35, 40, 44]
        print(
            "Laplace calibration on L = 12 (unobserved components, ±2σ; nominal 0.954), "
            f"best path of 8 at each β, schedule extended to {n_beta} β"
        )
        print(
            "| discretisation | β | R_f | truth inside ±2σ | RMS error | mean σ | forcing ± σ "
            "| 8.17 inside ±2σ |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for scheme in ("trapezoid", "simpson_hermite"):
            for r in calibration_rows(scheme, 4 if quick else 8, n_beta, betas):
                print(
                    f"| {scheme} | {r['beta']} | {r['rf']:.3g} | {r['inside']:.3f} | "
                    f"{r['rms']:.4f} | {r['sigma']:.4f} | {r['forcing']:.4f} ± "
                    f"{r['forcing_std']:.4f} | {r['covered']} |"
                )
                if r["beta"] == 30:
                    summary.append(
                        (
                            f"calibration, {scheme}, β 30",
                            f"inside ±2σ {r['inside']:.3f}, forcing covered {r['covered']}",
                        )
                    )
        print()

    if "pamc96" not in args.skip:
        r = pamc_lorenz96_rows(quick)
        a = r["L12"]
        print(
            f"PAMC on L = 12 at β 28–30 ({a['n_chains']} chains, NUTS, {a['draws']} warm-up + "
            f"{a['draws']} draws per β, from the annealed minima) against Laplace at β 30:"
        )
        print(
            f"states within 4 Monte Carlo errors of Laplace's means: {a['inside4']:.4f} "
            f"(max |z| {a['zmax']:.2f}); forcing {a['forcing_mc']:.4f} ± "
            f"{a['forcing_mc_std']:.4f} (PAMC) vs {a['forcing_lap']:.4f} ± "
            f"{a['forcing_lap_std']:.4f} (Laplace), z = {a['forcing_z']:.2f}"
        )
        print(
            f"posterior std PAMC / Laplace: 5%, 50%, 95% = "
            f"{', '.join(f'{v:.3f}' for v in a['ratio'])}; ⟨A₀⟩ {a['a0']:.1f} vs A₀* + n/2 "
            f"= {a['a0_gauss']:.1f}; ESS min / median {a['ess'][0]:.0f} / {a['ess'][1]:.0f}, "
            f"R̂ max {a['rhat']:.3f}; {a['time']:.0f} s, {a['leapfrogs']} leapfrog steps\n"
        )
        print(
            f"PAMC on L = 8 ({r['L8_chains'][0]} chains, {r['L8_chains'][1]} warm-up + "
            f"{r['L8_chains'][1]} draws per β, from the annealed minima of the first β; "
            f"{r['L8_time']:.0f} s); annealed levels in A₀ units, (n_m/2)·A; n/2 = "
            f"{r['L8_half_n']:.0f}"
        )
        print("| β | R_f | ⟨A₀⟩ ± std | annealed A₀ min | median | max | R̂ max | acceptance |")
        print("|---|---|---|---|---|---|---|---|")
        for row in r["L8"]:
            lo, mid, hi = row["levels"]
            print(
                f"| {row['beta']} | {row['rf']:.3g} | {row['a0']:.1f} ± {row['a0_std']:.1f} | "
                f"{lo:.1f} | {mid:.1f} | {hi:.1f} | {row['rhat']:.3f} | "
                f"{row['acceptance']:.2f} |"
            )
        print()
        summary.append(
            (
                "PAMC vs Laplace, L = 12 β 30",
                f"{a['inside4']:.3f} of states within 4 MC errors; forcing z {a['forcing_z']:.2f}",
            )
        )

    print("| summary | result |")
    print("|---|---|")
    for name, value in summary:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
