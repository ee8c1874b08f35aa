"""`deepest cycle CONFIG.yaml`: cycled assimilation ([`deepest.cycle`][]) of a config's
problem, window after window, its checkpoint written as it runs for `--resume`."""

import os
import warnings

import numpy as np

from ._folder import INCOMPLETE
from ._session import (
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


def resume_cycle(directory: str) -> tuple[str, str]:
    """For `deepest cycle --resume DIRECTORY`: the folder holding the partial cycle.npz to
    go on from (`OUT.incomplete`, a killed run's, newer than a published partial result;
    else `DIRECTORY` itself) and the results folder the resumed run publishes."""
    from .. import CycleResult

    directory = os.path.normpath(directory)
    out = directory[: -len(INCOMPLETE)] if directory.endswith(INCOMPLETE) else directory
    for source in (out + INCOMPLETE, directory):
        if os.path.isfile(os.path.join(source, CycleResult.file_name)):
            if not CycleResult.load(source).partial:
                raise ValueError(f"--resume {directory}: the cycle there is complete.")
            return source, out
    raise ValueError(
        f"--resume {directory}: no {CycleResult.file_name} there nor in {out + INCOMPLETE} "
        "(a cycle writes one every `output.checkpoint_every` seconds and on Ctrl-C)."
    )


def cycle_summary(result, data, config) -> str:
    """The text of summary.txt: the windows, their statistics against the truth (where
    the data know it) after `cycle.burn_in`, and the estimated parameters."""
    burn_in = config.cycle.burn_in
    seconds = np.median(result.seconds) if result.n_windows else float("nan")
    lines = [
        f"windows: {result.n_windows}   (window {config.cycle.window}, "
        f"shift {config.cycle.shift}, {config.cycle.n_paths} paths)",
        f"seconds per window (median): {seconds:.3g}",
    ]
    if result.stopped is not None:
        lines.append(f"stopped: {result.stopped}")
    kinds = ("forecast", "analysis", "smoothed")
    rmse = result.rmse(data.truth, burn_in) if data.truth is not None else None
    spread = result.spread(burn_in)
    lines.append(f"after burn-in {burn_in:g}:")
    for kind in kinds:
        error = f"RMSE {rmse[kind]:.4g}   " if rmse is not None else ""
        lines.append(f"  {kind:<9} {error}spread {spread[kind]:.4g}")
    if result.n_windows:
        truth = data.true_params or {}
        std = _by_name(result.params_std[-1], result.settings["estimate"])
        for name, value in result.parameters.items():
            line = (
                f"estimated {name} (last window): {np.array2string(value[-1], precision=4)}"
                f" ± {np.array2string(std[name], precision=2)}"
            )
            if name in truth:
                line += f"   (true {np.array2string(np.asarray(truth[name]), precision=4)})"
            lines.append(line)
    return "\n".join(lines) + "\n"


def _by_name(flat: np.ndarray, estimate) -> dict[str, np.ndarray]:
    """A flat vector of the estimated parameters, by name (as `CycleResult.parameters`)."""
    out, start = {}, 0
    for name, shape in estimate:
        size = int(np.prod(shape, dtype=int))
        out[name] = flat[start : start + size].reshape(shape)
        start += size
    return out


def run_cycle(
    config_path: str | None,
    sets,
    out,
    overwrite,
    session: Session,
    resume: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Outcome:
    """`deepest cycle`: the cycle of the config's problem into the results folder `out`:
    cycle.npz, summary.txt and (a complete run) cycle.png. Its checkpoint is the folder's
    own cycle.npz (partial), which `--resume` goes on from."""
    config, source, out = read_config("cycle", config_path, sets, out, resume, resume_cycle)
    start_jax(config.anneal.dtype)
    folder = open_folder(session, out, overwrite, source)
    resume_line = f"continue with `deepest cycle --resume {out}`"

    def work() -> Outcome:
        start_plots()
        from .. import CycleResult, cycle

        if source is None:
            write_config(folder.file("config.yaml"), config)
        with session.phase("data and problem: building"):
            data, _, inputs = config.build_data()
            arguments = config.cycle_arguments(data, inputs)
        done = os.path.exists(folder.file(CycleResult.file_name))
        cycling = f"cycling: windows of {config.cycle.window} observation intervals"
        with session.phase(cycling), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Annealing interrupted")  # the CLI says how to resume
            result = cycle(
                data=data,
                progress=progress,
                checkpoint=folder.path,
                resume=folder.path if done else None,
                check_memory=not force,
                **arguments,
            )

        def write(where):
            with session.phase(f"results: the cycle, plot and summary into {where}"):
                result.save(where, overwrite=True)
                summary = cycle_summary(result, data, config)
                if result.partial:
                    summary = f"PARTIAL RESULT: {resume_line}\n" + summary
                elif data.truth is not None:
                    import matplotlib.pyplot as plt

                    ax = result.plot(data.truth, burn_in=config.cycle.burn_in)
                    ax.figure.savefig(
                        os.path.join(where, "cycle.png"), dpi=120, bbox_inches="tight"
                    )
                    plt.close(ax.figure)
                write_text(os.path.join(where, "summary.txt"), summary)
            return summary

        save = lambda where: result.save(where, overwrite=True)  # noqa: E731
        outcome = finish(
            session, folder, write, partial=result.partial, save=save, resume=resume_line
        )
        stopped = result.stopped not in (None, "interrupted")
        if stopped and outcome.failed is None:
            outcome.failed = f"the cycle stopped: {result.stopped}"
        return outcome

    return session.run(work, lambda: kept_on_interrupt(folder, "cycle", out), folder)
