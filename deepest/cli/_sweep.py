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
import time
import warnings

import numpy as np

from ..experiments import load
from ._anneal import rms_errors, write_results
from ._folder import INCOMPLETE, ResultsFolder, default_out


def _yaml(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


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
    sweep_path: str | None, out, overwrite, progress, resume: str | None = None
) -> tuple[str, bool]:
    """`deepest sweep`: returns the results folder and whether the result is partial."""
    import yaml

    source = None
    if resume is not None:
        source, out = _sweep_source(resume)
        sweep_path = os.path.join(source, "sweep.yaml")
    elif out is None:
        out = default_out(sweep_path)
    spec = load(sweep_path, kind="sweep")
    points = spec.points
    import jax

    if points[0].config.anneal.dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    # With several processes (jax.distributed) process 0 writes; every process reads.
    writes = jax.process_index() == 0
    folder = ResultsFolder(out, overwrite, resume_from=source) if writes else None
    checkpoints = os.path.join(folder.path if writes else out + INCOMPLETE, "checkpoints")
    try:
        if source is None and writes:
            with open(folder.file("sweep.yaml"), "w") as f:
                yaml.safe_dump(spec.model_dump(), f, sort_keys=False)
        start = time.perf_counter()
        built = [p.config.build() for p in points]
        built_time = time.perf_counter() - start
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Annealing interrupted")
            results = spec.run(
                built,
                progress=progress,
                checkpoint=checkpoints,
                resume=os.path.join(source, "checkpoints") if source is not None else None,
            )
        partial = any(r is None or r.partial for r in results)
        if not writes:
            return out, partial
        rows, keys = [], list(spec.grid)
        for i, (point, (_, _, data, true_model), result) in enumerate(zip(points, built, results)):
            if result is None:
                continue
            name = f"point-{i:03d}"
            where = folder.file(name)
            os.makedirs(where, exist_ok=True)
            with open(os.path.join(where, "config.yaml"), "w") as f:
                yaml.safe_dump(point.config.model_dump(), f, sort_keys=False)
            write_results(where, result, data, true_model, point.config, out)
            rows.append({"point": name, **point.settings, **_metrics(result, data)})
        _write_index(rows, folder.file("index.csv"))
        _plot(rows, keys, folder.file("sweep.png"))
        if not partial:
            import shutil

            shutil.rmtree(checkpoints, ignore_errors=True)
        folder.publish()
    except BaseException:
        if folder is not None and not os.path.isdir(checkpoints):
            folder.discard()
        raise
    n_programs = len({r.stats["program"] for r in results if r is not None})
    print(
        f"{len(rows)} of {len(points)} points in {n_programs} program(s); "
        f"data and problems {built_time:.2f} s"
    )
    return out, partial


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
    for source in (directory, out + INCOMPLETE):
        if os.path.isdir(os.path.join(source, "checkpoints")) and os.path.isfile(
            os.path.join(source, "sweep.yaml")
        ):
            return source, out
    raise ValueError(
        f"--resume {directory}: no interrupted sweep there nor in {out + INCOMPLETE} "
        "(its checkpoints/ and sweep.yaml)."
    )
