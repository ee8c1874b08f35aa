"""Uncertainty in the command line: `deepest anneal … --laplace` and `deepest pamc CONFIG.yaml`."""

import functools
import os
import time
import warnings

import numpy as np

from .. import PAMCResult
from ..annealing import CHECKPOINT
from ._anneal import write_results
from ._folder import resume_folder
from ._laplace import uncertainty_summary, write_uncertainty_plot
from ._session import (
    PREPARING,
    CommandLineMeter,
    Outcome,
    Session,
    finish,
    kept_on_interrupt,
    open_folder,
    read_config,
    start_jax,
    start_plots,
    write_config,
    write_text,
)

PAMC_CHECKPOINT = PAMCResult.checkpoint_name  # in pamc's `checkpoint` folder


def run_pamc(
    config_path: str | None,
    sets,
    out,
    overwrite,
    session: Session,
    resume: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Outcome:
    """`deepest pamc`: anneal (unless `pamc.start: draws`), then precision annealing Monte
    Carlo, each with its checkpoints (`--resume` goes on from them)."""
    locate = functools.partial(resume_folder, command="pamc")
    config, source, out = read_config("pamc", config_path, sets, out, resume, locate)
    start_jax(config.anneal.dtype)
    folder = open_folder(session, out, overwrite, source)
    resume_line = f"continue with `deepest pamc --resume {out}`"

    def work() -> Outcome:
        start_plots()
        import jax
        import matplotlib.pyplot as plt

        from .. import pamc, plot_expected_action

        p = config.pamc
        if source is None:
            write_config(folder.file("config.yaml"), config)
        with session.phase("data and problem: building"):
            problem, schedule, data, true_model = config.build()
        betas = config.betas()
        result, init = None, None
        if p.start == "anneal":
            save_betas = sorted(set(config.output.save_betas) | {betas[0]})
            with session.phase(PREPARING):
                result = config.run(
                    problem,
                    schedule,
                    progress=CommandLineMeter(progress),
                    save_betas=save_betas,
                    checkpoint=folder.path,
                    resume=folder.path if os.path.exists(folder.file(CHECKPOINT)) else None,
                    check_memory=not force,
                )
            if result.partial:  # interrupted: its checkpoint is kept
                folder.keep()
                return Outcome(folder.path, True, f"PARTIAL RESULT: {resume_line}\n")
            write_results(folder.path, result, data, true_model, config, out, session)
            init = result
        start = time.perf_counter()
        with session.phase(f"PAMC: {p.n_chains} chains, {len(betas)} β"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "PAMC interrupted")  # the CLI says how to resume
            mc = pamc(
                problem,
                schedule,
                p.n_chains,
                config.pamc_key(),
                init=init,
                progress=progress,
                checkpoint=folder.path,
                resume=folder.path if os.path.exists(folder.file(PAMC_CHECKPOINT)) else None,
                **config.pamc_options(),
            )
        if mc.partial:
            folder.keep()
            return Outcome(folder.path, True, f"PARTIAL RESULT: {resume_line}\n")
        sampling_time = time.perf_counter() - start

        def write(where):
            with session.phase("results: samples, plots and summary"):
                mc.save(where, overwrite=True)
                ax = plot_expected_action(mc, result)
                ax.figure.savefig(
                    os.path.join(where, "expected_action.png"), dpi=120, bbox_inches="tight"
                )
                plt.close(ax.figure)
                last = int(mc.betas[-1])
                horizon = config.output.forecast_horizon if last in mc.samples else 0.0
                write_uncertainty_plot(where, mc, data, true_model, horizon)
                ess = np.concatenate([np.ravel(a[-1]) for a in jax.tree.leaves(mc.ess)])
                rhat = np.concatenate([np.ravel(a[-1]) for a in jax.tree.leaves(mc.rhat)])
                lines = [
                    f"precision annealing Monte Carlo: {p.n_chains} chains ({p.kernel}), "
                    f"{p.n_samples} draws per chain and β after {p.n_warmup} warm-up steps",
                    f"chains flagged non-finite: {int(np.sum(~mc.finite))}",
                    f"at the last β ({last}, R_f = {np.asarray(mc.rf[-1])}):",
                    *uncertainty_summary(mc, data),
                    f"⟨A₀⟩ = {mc.action0_mean[-1]:.6g} ± {mc.action0_std[-1]:.3g}",
                    f"ESS min / median: {np.nanmin(ess):.0f} / {np.nanmedian(ess):.0f}   "
                    f"R̂ max: {np.nanmax(rhat):.3f}   acceptance: {np.mean(mc.acceptance[-1]):.2f}",
                    "⟨A₀⟩ per β: " + " ".join(f"{a:.4g}" for a in mc.action0_mean),
                    f"sampling time: {sampling_time:.2f} s",
                    *(f"WARNING: {w}" for w in mc.warnings()),
                ]
                for w in mc.warnings():
                    session.say(f"WARNING: {w}")
                summary = "\n".join(lines) + "\n"
                summary_path = os.path.join(where, "summary.txt")
                if result is not None and os.path.exists(summary_path):
                    with open(summary_path) as f:
                        summary = f.read() + summary
                write_text(summary_path, summary)
            return summary

        def save(where):
            mc.save(where, overwrite=True)

        return finish(session, folder, write, partial=False, save=save, resume=resume_line)

    return session.run(work, lambda: kept_on_interrupt(folder, "pamc", out), folder)
