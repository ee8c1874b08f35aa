"""Uncertainty in the command line: `deepest anneal … --laplace` and `deepest pamc CONFIG.yaml`."""

import copy
import os
import time

import numpy as np

from ._anneal import (
    ANNEAL_DEFAULTS,
    anneal_from_config,
    build_anneal,
    resolve_anneal_config,
    write_results,
)
from ._config import choice, default_out, integer, load_config, merge, number
from ._folder import ResultsFolder

PAMC_DEFAULTS = {
    **copy.deepcopy(ANNEAL_DEFAULTS),
    "pamc": {
        "n_chains": 64,
        "n_samples": 200,
        "n_warmup": 200,
        "kernel": "nuts",
        "num_integration_steps": 16,
        "target_acceptance": 0.8,
        "betas": None,  # null: every β of the anneal section's schedule
        "start": "anneal",  # the first β's chains start at annealed minima, or "draws"
        "save_betas": None,  # null: the last β run
        "seed": 2,
    },
}


def resolve_pamc_config(config: dict) -> dict:
    """Check a whole pamc config (an anneal config with a `pamc` section) and fill in
    every default, before any compute."""
    config = dict(config or {})
    section = merge(PAMC_DEFAULTS["pamc"], config.pop("pamc", None) or {}, "config.pamc")
    config = resolve_anneal_config(config)
    n_beta = config["anneal"]["n_beta"]
    integer("pamc.n_chains", section["n_chains"], 1)
    integer("pamc.n_samples", section["n_samples"], 4)
    integer("pamc.n_warmup", section["n_warmup"], 0)
    choice("pamc.kernel", section["kernel"], ("nuts", "hmc"))
    integer("pamc.num_integration_steps", section["num_integration_steps"], 1)
    target = number("pamc.target_acceptance", section["target_acceptance"], 0.0)
    if not target < 1:
        raise ValueError(f"`pamc.target_acceptance` must lie in (0, 1); got {target}.")
    choice("pamc.start", section["start"], ("anneal", "draws"))
    integer("pamc.seed", section["seed"], 0)
    for key in ("betas", "save_betas"):
        value = section[key]
        if value is None:
            continue
        if not isinstance(value, list) or not value:
            raise ValueError(f"`pamc.{key}` must be a list of β indices or null; got {value!r}.")
        for b in value:
            integer(f"pamc.{key}", b, 0)
            if b >= n_beta:
                raise ValueError(f"`pamc.{key}` has β {b}, out of range [0, {n_beta}).")
    betas = section["betas"] or list(range(n_beta))
    if any(b >= c for b, c in zip(betas, betas[1:])):
        raise ValueError(f"`pamc.betas` must increase; got {betas}.")
    missing = sorted(set(section["save_betas"] or []) - set(betas))
    if missing:
        raise ValueError(f"`pamc.save_betas` names β's that are not run: {missing}.")
    config["pamc"] = section
    return config


def uncertainty_summary(estimate, data, which=None, label: str = "") -> list[str]:
    """Lines for summary.txt: each parameter as mean ± σ, and how often the truth lies
    inside the ±2σ bands of the observed and unobserved components."""
    means, stds, params = estimate.bands(which)
    lines = []
    for name, (mean, std) in params.items():
        line = (
            f"{name}{label}: {np.array2string(np.asarray(mean), precision=4)} ± "
            f"{np.array2string(np.asarray(std), precision=4)} (1σ)"
        )
        true = (data.true_params or {}).get(name)
        if true is not None:
            inside = np.all(np.abs(np.asarray(mean) - np.asarray(true)) <= 2 * np.asarray(std))
            line += f"   true {np.array2string(np.asarray(true), precision=4)} inside ±2σ: {inside}"
        lines.append(line)
    if data.truth is not None:
        step = estimate.problem.steps_per_obs
        means, stds = np.asarray(means)[::step], np.asarray(stds)[::step]
        truth = np.asarray(data.truth)
        observed = list(data.observed)
        unobserved = [c for c in range(truth.shape[1]) if c not in observed]
        for what, idx in (("observed", observed), ("unobserved", unobserved)):
            if idx:
                inside = np.abs(truth[:, idx] - means[:, idx]) <= 2 * stds[:, idx]
                lines.append(
                    f"truth inside ±2σ{label}, {what} components: {np.mean(inside):.3f}   "
                    f"(mean σ {np.mean(stds[:, idx]):.4g})"
                )
    return lines


def write_uncertainty_plot(path: str, estimate, data, true_model, horizon: float, which=None):
    """uncertainty.png: the estimates' ±2σ bands against the truth, with the forecast band."""
    import matplotlib.pyplot as plt

    from .. import integrate, plot_uncertainty

    forecast = true_future = None
    if horizon > 0:
        forecast = float(data.times[-1]) + horizon
        if data.truth is not None:
            times = np.linspace(float(data.times[-1]), forecast, 200)
            true_future = (times, integrate(true_model, np.asarray(data.truth)[-1], times))
    fig = plot_uncertainty(estimate, data, which=which, forecast=forecast, true_future=true_future)
    fig.savefig(os.path.join(path, "uncertainty.png"), dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_laplace(path: str, result, problem, data, true_model, config: dict) -> list[str]:
    """`--laplace`: laplace.npz, uncertainty.png and the summary's Laplace lines."""
    from .. import laplace

    lap = laplace(problem, result)
    np.savez(
        os.path.join(path, "laplace.npz"),
        paths=lap.paths,
        rf=lap.rf,
        action0=lap.action0,
        log_det=lap.log_det,
        log_mass=lap.log_mass,
        positive_definite=lap.positive_definite,
        paths_mean=np.asarray(problem.views(lap.unknowns)["paths"]),
        paths_std=np.asarray(lap.paths_std),
        **{f"params_std.{k}": np.asarray(v) for k, v in lap.params_std.items()},
    )
    horizon = float(config["output"]["forecast_horizon"])
    write_uncertainty_plot(path, lap, data, true_model, horizon, which=result.best)
    lines = [
        f"Laplace at the final β (R_f = {np.asarray(lap.rf)}), best path {result.best}:",
        *uncertainty_summary(lap, data, result.best),
        f"Hessian positive definite: {int(lap.positive_definite.sum())} of {lap.paths.size} paths",
        f"largest Laplace mass: path {int(np.nanargmax(lap.log_mass))}   (lowest action: path "
        f"{result.best})",
    ]
    return lines


def _save_pamc(path: str, out) -> None:
    arrays = {
        "betas": out.betas,
        "rf": out.rf,
        "action0_mean": out.action0_mean,
        "action0_std": out.action0_std,
        "acceptance": out.acceptance,
        "step_size": out.step_size,
        "finite": out.finite,
    }
    for name in ("mean", "std", "mc_error", "ess", "rhat"):
        for key, value in _flat(getattr(out, name)).items():
            arrays[f"{name}/{key}"] = value
    for key, value in _flat(out.views).items():
        arrays[f"views/{key}"] = value
    for beta, samples in out.samples.items():
        for key, value in _flat(samples).items():
            arrays[f"samples/{beta}/{key}"] = value
    np.savez(os.path.join(path, "pamc.npz"), **arrays)


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}/"))
        return out
    return {prefix.rstrip("/"): np.asarray(tree)}


def run_pamc(config_path: str, sets, out, overwrite, progress) -> str:
    """`deepest pamc`: anneal (unless `pamc.start: draws`), then precision annealing Monte
    Carlo; returns the results folder."""
    import yaml

    config = resolve_pamc_config(load_config(config_path, sets, PAMC_DEFAULTS))
    out = default_out(config_path) if out is None else out
    import jax

    if config["anneal"]["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.random as jr
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import pamc, plot_expected_action

    p = config["pamc"]
    folder = ResultsFolder(out, overwrite)
    try:
        with open(folder.file("config.yaml"), "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        problem, schedule, data, true_model = build_anneal(config)
        betas = p["betas"] or list(range(schedule.n_beta))
        result, init, lines = None, None, []
        if p["start"] == "anneal":
            anneal_config = copy.deepcopy(config)
            anneal_config["output"]["save_betas"] = sorted(
                set(anneal_config["output"]["save_betas"]) | {betas[0]}
            )
            result = anneal_from_config(problem, schedule, anneal_config, progress)
            if result.partial:
                raise KeyboardInterrupt
            write_results(folder.path, result, data, true_model, anneal_config, out)
            init = result
        start = time.perf_counter()
        mc = pamc(
            problem,
            schedule,
            int(p["n_chains"]),
            jr.key(int(p["seed"])),
            int(p["n_samples"]),
            n_warmup=int(p["n_warmup"]),
            kernel=p["kernel"],
            num_integration_steps=int(p["num_integration_steps"]),
            target_acceptance=float(p["target_acceptance"]),
            init=init,
            betas=betas,
            save_betas=p["save_betas"],
        )
        _save_pamc(folder.path, mc)
        ax = plot_expected_action(mc, result)
        ax.figure.savefig(folder.file("expected_action.png"), dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        last = int(mc.betas[-1])
        horizon = float(config["output"]["forecast_horizon"]) if last in mc.samples else 0.0
        write_uncertainty_plot(folder.path, mc, data, true_model, horizon)
        ess = np.concatenate([np.ravel(a[-1]) for a in jax.tree.leaves(mc.ess)])
        rhat = np.concatenate([np.ravel(a[-1]) for a in jax.tree.leaves(mc.rhat)])
        lines += [
            f"precision annealing Monte Carlo: {p['n_chains']} chains ({p['kernel']}), "
            f"{p['n_samples']} draws per chain and β after {p['n_warmup']} warm-up steps",
            f"chains flagged non-finite: {int(np.sum(~mc.finite))}",
            f"at the last β ({last}, R_f = {np.asarray(mc.rf[-1])}):",
            *uncertainty_summary(mc, data),
            f"⟨A₀⟩ = {mc.action0_mean[-1]:.6g} ± {mc.action0_std[-1]:.3g}",
            f"ESS min / median: {np.nanmin(ess):.0f} / {np.nanmedian(ess):.0f}   R̂ max: "
            f"{np.nanmax(rhat):.3f}   acceptance: {np.mean(mc.acceptance[-1]):.2f}",
            "⟨A₀⟩ per β: " + " ".join(f"{a:.4g}" for a in mc.action0_mean),
            f"sampling time: {time.perf_counter() - start:.2f} s",
        ]
        summary = "\n".join(lines) + "\n"
        if result is not None:
            with open(folder.file("summary.txt")) as f:
                summary = f.read() + summary
        with open(folder.file("summary.txt"), "w") as f:
            f.write(summary)
        folder.publish()
    except BaseException:
        folder.discard()
        raise
    print(summary, end="")
    return out
