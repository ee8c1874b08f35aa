"""`deepest sweep SWEEP.yaml`: a grid of anneal configs, run in as few programs as shapes.

A sweep file names a base config and a grid of dotted keys:

    base: lorenz96_L12.yaml        # a config file (relative to this one), or the config itself
    grid:
      anneal.rf0: [1.0e-6, 1.0e-4]
      data.twin.seed: [0, 1]
    combine: product               # every combination (default), or zip: the i-th of each

Each point is the base with its grid values set, checked as `deepest anneal` checks a config
(all points before any compute). The points run through [`deepest.sweep`][]: those of one
shape in one compiled program. The results folder holds `sweep.yaml` (the resolved sweep),
`point-NNN/` (each as `deepest anneal` writes it), `index.csv` (a row per point: its
settings, best action, measurement error, RMS errors against the truth, estimated
parameters, converged fraction, stop reasons, times) and `sweep.png`.
"""

import csv
import os

import numpy as np

from ..experiments import load
from ._anneal import rms_errors, write_results
from ._folder import INCOMPLETE, default_out
from ._session import (
    PREPARING,
    CommandLineMeter,
    Outcome,
    Session,
    finish,
    kept_on_interrupt,
    open_folder,
    start_jax,
    start_plots,
    write_config,
    write_text,
)


def _yaml(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def yaml_text(value) -> str:
    import yaml

    return yaml.safe_dump(value, sort_keys=False)


def _metrics(result, data) -> dict:
    """A point's row of index.csv (besides its settings)."""
    best, last = result.best, result.last_beta
    row = {
        "best_action": float(result.action[last, best]),
        "measurement_error": float(result.measurement_error[last, best]),
        "model_error": float(result.model_error[last, best]),
    }
    if data.truth is not None:
        observed, unobserved = rms_errors(result, data)
        row["rms_observed"] = observed
        row["rms_unobserved"] = float("nan") if unobserved is None else unobserved
    for name, value in result.params.items():
        row[f"estimated_{name}"] = float(np.mean(np.asarray(value)[best]))
    s = result.summary()
    row["converged_fraction"] = s["converged_fraction"]
    row["stop_reasons"] = " ".join(f"{k}:{v}" for k, v in s["stop_reasons"].items() if v)
    row["run_time"] = s["run_time"]
    row["compile_time"] = s["compile_time"]
    row["partial"] = result.partial
    return row


def _plot(rows: list[dict], keys: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [("best_action", "best action (last β)")]
    if any("rms_unobserved" in r for r in rows):
        measures.append(("rms_unobserved", "RMS error, unobserved components"))
    fig, axes = plt.subplots(1, len(measures), figsize=(5.5 * len(measures), 4), squeeze=False)
    numeric = [k for k in keys if all(isinstance(r[k], (int, float)) for r in rows)]
    x_key = numeric[0] if numeric else None
    others = [k for k in keys if k != x_key]
    for ax, (name, label) in zip(axes[0], measures):
        lines: dict[str, list] = {}
        for i, r in enumerate(rows):
            tag = ", ".join(f"{k}={r[k]}" for k in others)
            lines.setdefault(tag, []).append((r[x_key] if x_key else i, r.get(name, np.nan)))
        for tag, pts in lines.items():
            pts.sort()
            ax.plot(*zip(*pts), "o-", label=tag or None)
        ax.set_xlabel(x_key or "point")
        ax.set_ylabel(label)
        values = [r[x_key] for r in rows] if x_key else []
        if values and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        if name == "best_action":
            ax.set_yscale("log")
        if any(lines):
            ax.legend(fontsize=7)
    fig.suptitle(f"sweep of {len(rows)} points")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def run_sweep(
    sweep_path: str | None,
    out,
    overwrite,
    session: Session,
    resume: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Outcome:
    """`deepest sweep`."""
    source = None
    if resume is not None:
        source, out = _sweep_source(resume)
        sweep_path = os.path.join(source, "sweep.yaml")
    elif out is None:
        out = default_out(sweep_path)
    spec = load(sweep_path, kind="sweep")
    points = spec.points
    jax = start_jax(points[0].config.anneal.dtype)
    # With several processes (jax.distributed) process 0 writes; every process reads.
    writes = jax.process_index() == 0
    folder = open_folder(session, out, overwrite, source, shared=True)
    checkpoints = os.path.join(folder.path if writes else out + INCOMPLETE, "checkpoints")

    def work() -> Outcome:
        start_plots()
        if source is None and writes:
            write_text(folder.file("sweep.yaml"), yaml_text(spec.model_dump()))
        built = []
        with session.phase(f"data and problems: building {len(points)} points"):
            for i, p in enumerate(points):
                built.append(p.config.build())
                session.phase_name = f"data and problems: {i + 1} of {len(points)} points built"
        with session.phase(PREPARING):
            results = spec.run(
                built,
                progress=CommandLineMeter(progress),
                checkpoint=checkpoints,
                resume=os.path.join(source, "checkpoints") if source is not None else None,
                check_memory=not force,
            )
        partial = any(r is None or r.partial for r in results)
        if not writes:
            return Outcome(out, partial)
        done = sum(r is not None and not r.partial for r in results)
        n_programs = len({r.stats["program"] for r in results if r is not None})
        session.say(f"sweep: {done} of {len(points)} points finished in {n_programs} program(s)")

        def write(where):
            rows, keys = [], list(spec.grid)
            with session.phase(f"results: writing {len(points)} points"):
                for i, (point, (_, _, data, true_model), result) in enumerate(
                    zip(points, built, results)
                ):
                    if result is None:
                        continue
                    name = f"point-{i:03d}"
                    place = os.path.join(where, name)
                    os.makedirs(place, exist_ok=True)
                    write_config(os.path.join(place, "config.yaml"), point.config)
                    # a partial sweep's points without plots: Ctrl-C is answered at once
                    write_results(
                        place, result, data, true_model, point.config, out, plots=not partial
                    )
                    rows.append({"point": name, **point.settings, **_metrics(result, data)})
                    session.phase_name = f"results: {len(rows)} of {len(points)} points written"
                _write_index(rows, os.path.join(where, "index.csv"))
                if not partial:
                    _plot(rows, keys, os.path.join(where, "sweep.png"))
            return f"{len(rows)} of {len(points)} points in {n_programs} program(s)\n"

        def save(where):
            for i, result in enumerate(results):
                if result is not None:
                    result.save(os.path.join(where, f"point-{i:03d}"), overwrite=True)

        resume_line = f"continue with `deepest sweep --resume {out}`"
        return finish(session, folder, write, partial=partial, save=save, resume=resume_line)

    return session.run(work, lambda: kept_on_interrupt(folder, "sweep", out), folder)


def _write_index(rows: list[dict], path: str) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(r.get(k, "")) for k in columns})


def _cell(value):
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return _yaml(value)
    return value


def _sweep_source(directory: str) -> tuple[str, str]:
    """For `--resume DIRECTORY`: the folder with the sweep's checkpoints, and its results
    folder (as for `deepest anneal --resume`)."""
    directory = os.path.normpath(directory)
    out = directory[: -len(INCOMPLETE)] if directory.endswith(INCOMPLETE) else directory
    for source in (out + INCOMPLETE, directory):  # the newer first, as `resume_source`
        if os.path.isdir(os.path.join(source, "checkpoints")) and os.path.isfile(
            os.path.join(source, "sweep.yaml")
        ):
            return source, out
    raise ValueError(
        f"--resume {directory}: no interrupted sweep there nor in {out + INCOMPLETE} "
        "(its checkpoints/ and sweep.yaml)."
    )
