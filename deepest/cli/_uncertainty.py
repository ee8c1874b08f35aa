"""Uncertainty in the command line: `deepest anneal … --laplace` and `deepest pamc CONFIG.yaml`."""

import time

import numpy as np

from ..experiments import load
from ._anneal import write_results
from ._folder import ResultsFolder, default_out
from ._laplace import uncertainty_summary, write_uncertainty_plot


def run_pamc(config_path: str, sets, out, overwrite, progress) -> str:
    """`deepest pamc`: anneal (unless `pamc.start: draws`), then precision annealing Monte
    Carlo; returns the results folder."""
    import yaml

    config = load(config_path, sets, kind="pamc")
    out = default_out(config_path) if out is None else out
    import jax

    if config.anneal.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import pamc, plot_expected_action

    p = config.pamc
    folder = ResultsFolder(out, overwrite)
    try:
        with open(folder.file("config.yaml"), "w") as f:
            yaml.safe_dump(config.model_dump(), f, sort_keys=False)
        problem, schedule, data, true_model = config.build()
        betas = config.betas()
        result, init, lines = None, None, []
        if p.start == "anneal":
            save_betas = sorted(set(config.output.save_betas) | {betas[0]})
            result = config.run(problem, schedule, progress=progress, save_betas=save_betas)
            if result.partial:
                raise KeyboardInterrupt
            write_results(folder.path, result, data, true_model, config, out)
            init = result
        start = time.perf_counter()
        mc = pamc(
            problem, schedule, p.n_chains, config.pamc_key(), init=init, **config.pamc_options()
        )
        mc.save(folder.path, overwrite=True)
        ax = plot_expected_action(mc, result)
        ax.figure.savefig(folder.file("expected_action.png"), dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        last = int(mc.betas[-1])
        horizon = config.output.forecast_horizon if last in mc.samples else 0.0
        write_uncertainty_plot(folder.path, mc, data, true_model, horizon)
        ess = np.concatenate([np.ravel(a[-1]) for a in jax.tree.leaves(mc.ess)])
        rhat = np.concatenate([np.ravel(a[-1]) for a in jax.tree.leaves(mc.rhat)])
        lines += [
            f"precision annealing Monte Carlo: {p.n_chains} chains ({p.kernel}), "
            f"{p.n_samples} draws per chain and β after {p.n_warmup} warm-up steps",
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
