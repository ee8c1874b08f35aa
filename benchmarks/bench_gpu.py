"""The GPU rows of BENCHMARKS.md, unattended, in one call of a lent GPU machine (issue 25).

Rows, most important first, each written to `--out` (and stdout) as soon as it finishes:

1. `deepest.anneal` of 4096 paths × 31 β with L-BFGS on the shipped L = 12 and L = 8
   configs, float64 and float32, on the GPU;
2. `deepest.sweep` of 16 settings × 1024 paths (the L = 12 config with twin seeds 0–15 and
   rf0 alternating 1e-6, 1e-5, as `bench_long_runs.py` builds its sweep);
3. `deepest.laplace` of every path of the first row's result: time per path;
4. `deepest.pamc` chains per second (1024 chains, NUTS, 100 warm-up and 100 draws per β at
   the last two β's, from the first row's minima), timed on the second β (the first
   compiles); blackjax is not on the device image, so there this row is a note;
5. the L-BFGS rows again with the banded Levenberg–Marquardt;
6. the CPU comparison: L-BFGS at 64 paths on one CPU device (both configs, both dtypes).

The settings are the configs' own (tolerances, 5000 evaluations per β, history 10, damping
1e-3). Times: `stats["run_time"]` (compile excluded) and `stats["compile_time"]`; Laplace is
called twice (the second call is timed, the first's extra time is its compile).

A wall budget (`--budget`, from the start of this process) is checked before each row: a
row whose estimate does not fit is skipped with a note in its line. An estimate is the wall
time of the last row of the same family (kind, config, minimiser, device) that ran, or
else a guess for a GPU (`Row.guess`); the CPU float64 rows keep their time reserved, so
the GPU rows cannot crowd out the ratio's baseline. A row that raises is reported as
failed in its line (the traceback on stderr) and the script exits 1 after the other rows.

The problems are built here from the configs' YAML (`build`), not by
`deepest.experiments`, which needs pydantic: the device image lacks it (the package list
in the device notes), and a dry run fails if anything imported it. `tests/test_gpu_script.py`
checks that `build` gives what `deepest.experiments` builds.

`--dry-run` runs every row at toy size on one CPU device (the GPU rows labelled so), with
XLA's optimisations off to compile faster, in about a minute on 2 cores: `make test` runs
it through `gpu.sh` so that the script cannot rot. Its figures mean nothing. `--quick` is
the same.

    PYTHONPATH=. python3 benchmarks/bench_gpu.py [--dry-run] [--budget 540] [--out FILE]
"""

import argparse
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"L12": "lorenz96_L12.yaml", "L8": "lorenz96_L8.yaml"}
# The script cannot run without these; the device has no network to fetch them.
REQUIRED = ("jax", "jaxlib", "numpy", "equinox", "diffrax", "optax", "optimistix", "lineax")
REQUIRED += ("jaxtyping", "yaml", "tqdm")
OPTIONAL = ("blackjax", "pydantic", "scipy")
COLUMNS = (
    "row",
    "device",
    "dtype",
    "size",
    "run (s)",
    "compile (s)",
    "rate",
    "detail",
    "status",
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The sizes of one run: full on a GPU, or toy for `--dry-run`."""

    paths: int = 4096
    cpu_paths: int = 64
    n_beta: int | None = None  # None: the config's (31)
    max_evaluations: int | None = None  # None: the config's (5000)
    sweep_settings: int = 16
    sweep_paths: int = 1024
    chains: int = 1024
    warmup: int = 100
    draws: int = 100


FULL = Sizes()
DRY = Sizes(
    paths=4,
    cpu_paths=4,  # = paths: the CPU rows reuse the dry GPU rows' compiled programs
    n_beta=3,
    max_evaluations=20,
    sweep_settings=2,
    sweep_paths=4,
    chains=4,
    warmup=4,
    draws=4,
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: what runs, where, and a guess of its wall time on a GPU."""

    kind: str  # anneal, sweep, laplace, pamc
    config: str  # L12, L8
    minimiser: str  # L-BFGS, LM
    device: str  # gpu, cpu
    dtype: str  # float64, float32
    guess: float  # seconds, compile included, at full size: a guess until measured
    reserved: bool = False  # its time is kept free for it while earlier rows run

    @property
    def name(self) -> str:
        return f"{self.kind} {self.config} {self.minimiser}"

    @property
    def family(self) -> tuple:
        return (self.kind, self.config, self.minimiser, self.device)


def plan() -> list[Row]:
    """The rows in the order they run, most important first, CPU rows last."""
    rows = [
        Row("anneal", config, "L-BFGS", "gpu", dtype, 60 if dtype == "float64" else 40)
        for config in ("L12", "L8")
        for dtype in ("float64", "float32")
    ]
    rows += [
        Row("sweep", "L12", "L-BFGS", "gpu", "float64", 150),
        Row("laplace", "L12", "L-BFGS", "gpu", "float64", 40),
        Row("pamc", "L12", "NUTS", "gpu", "float64", 60),
    ]
    rows += [
        Row("anneal", config, "LM", "gpu", dtype, 90)
        for dtype in ("float64", "float32")
        for config in ("L12", "L8")
    ]
    rows += [
        Row("anneal", config, "L-BFGS", "cpu", dtype, 45, reserved=dtype == "float64")
        for dtype in ("float64", "float32")
        for config in ("L12", "L8")
    ]
    return rows


def build(config: str, n_beta: int | None = None, seed: int | None = None, rf0=None):
    """The problem, schedule and config dict of a shipped Lorenz-96 config, built as
    `deepest.experiments` builds it (without pydantic, which the device lacks).

    **Arguments:**

    - `config`: `"L12"` or `"L8"`.
    - `n_beta`, `seed`, `rf0`: override `anneal.n_beta`, `data.twin.seed`, `anneal.rf0`.

    **Returns:** `(problem, schedule, config)`, the last the YAML as a dict (overrides set).
    """
    import jax.random as jr
    import numpy as np
    import yaml

    import deepest

    with open(os.path.join(ROOT, "configs", CONFIGS[config])) as f:
        c = yaml.safe_load(f)
    if n_beta is not None:
        c["anneal"]["n_beta"] = n_beta
    if seed is not None:
        c["data"]["twin"]["seed"] = seed
    if rf0 is not None:
        c["anneal"]["rf0"] = rf0
    model, twin, p, a = c["model"], c["data"]["twin"], c["problem"], c["anneal"]
    if model["name"] != "lorenz96" or set(p) - {
        "rm",
        "discretisation",
        "steps_per_obs",
        "estimate",
        "state_range",
        "param_ranges",
    }:
        raise ValueError(f"{CONFIGS[config]}: `build` knows only the shipped Lorenz-96 keys.")
    true_model = deepest.models.Lorenz96(**model["params"])
    data = deepest.twin_experiment(
        true_model,
        model["dim"],
        twin["n_times"],
        twin["dt"],
        twin["observed"],
        twin["noise"],
        jr.key(twin["seed"]),
        spinup=twin["spinup"],
        substeps=twin["substeps"],
    )
    problem = deepest.Assimilation(
        deepest.models.Lorenz96(**model["params"]),
        data,
        np.asarray(p["rm"], dtype=float),
        dim=model["dim"],
        discretisation=p["discretisation"],
        steps_per_obs=p["steps_per_obs"],
        estimate=tuple(p["estimate"]),
        state_range=tuple(p["state_range"]),
        param_ranges={k: tuple(v) for k, v in p["param_ranges"].items()},
        bounds={},
    )
    schedule = deepest.AnnealSchedule(np.asarray(a["rf0"], dtype=float), a["alpha"], a["n_beta"])
    return problem, schedule, c


def minimiser(name: str, config: dict):
    """The config's L-BFGS (`"L-BFGS"`) or Levenberg–Marquardt (`"LM"`)."""
    import deepest

    if name == "L-BFGS":
        return deepest.LBFGS(history_length=config["anneal"]["history_length"])
    return deepest.LevenbergMarquardt(damping=config["anneal"]["damping"])


class Table:
    """Writes each line to stdout and to `path` at once (flushed), so that a run killed
    at its time limit leaves every finished row."""

    def __init__(self, path: str | None):
        self.file = None if path is None else open(path, "w", encoding="utf-8")

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        if self.file is not None:
            self.file.write(text + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())

    def row(self, cells) -> None:
        self.line("| " + " | ".join(str(c) for c in cells) + " |")


def version(name: str, load: bool = True) -> str | None:
    """The installed version of module `name`, or None where it is absent (with `load`,
    where it does not import)."""
    if load:
        try:
            importlib.import_module(name)
        except ImportError:
            return None
    elif importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version({"yaml": "pyyaml"}.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        return getattr(sys.modules.get(name), "__version__", "(no version)")


def environment(table: Table, dry_run: bool) -> None:
    """Prints the interpreter, the packages and the devices; exits with status 2, naming
    them, when a required package is missing."""
    dry = " (DRY RUN: toy sizes on the CPU; figures mean nothing)" if dry_run else ""
    table.line(f"# GPU benchmark{dry}")
    table.line()
    table.line(
        f"- python {platform.python_version()} ({sys.executable}), {platform.machine()}, "
        f"{os.cpu_count()} cores"
    )
    # the optional ones are looked up, not imported: a dry run checks that no row imports
    # pydantic
    versions = {name: version(name) for name in REQUIRED}
    versions.update({name: version(name, load=False) for name in OPTIONAL})
    table.line(
        "- packages: " + ", ".join(f"{n} {v}" if v else f"{n} ABSENT" for n, v in versions.items())
    )
    missing = [n for n in REQUIRED if versions[n] is None]
    if missing:
        table.line(f"- missing: {', '.join(missing)}; nothing can be installed there, stopping")
        sys.exit(2)
    import jax

    jax.config.update("jax_enable_x64", True)

    import deepest

    table.line(f"- deepest {deepest.__version__} from {os.path.dirname(deepest.__file__)}")
    table.line(f"- jax backend {jax.default_backend()}, devices {jax.devices()}")
    table.line()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU, every row")
    parser.add_argument("--quick", action="store_true", help="the same as --dry-run")
    parser.add_argument("--budget", type=float, default=540.0, help="wall seconds for all rows")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args()
    start = time.perf_counter()
    dry_run = args.dry_run or args.quick
    table = Table(args.out)
    environment(table, dry_run)

    import jax

    if dry_run:  # compiles in about half the time; the dry run's figures mean nothing
        jax.config.update("jax_disable_most_optimizations", True)
    sizes = DRY if dry_run else FULL
    accelerators = [d for d in jax.devices() if d.platform != "cpu"]
    cpu = jax.devices("cpu")[:1]
    if dry_run:
        gpu, gpu_label = cpu, "cpu (dry run)"
    else:
        gpu, gpu_label = accelerators, (accelerators[0].device_kind if accelerators else None)
    cpu_label = "cpu (dry run)" if dry_run else f"cpu (1 device, {os.cpu_count()} cores)"

    table.row(COLUMNS)
    table.row(["---"] * len(COLUMNS))
    rows = plan()
    measured: dict[tuple, float] = {}
    kept: dict[str, object] = {}  # the first row's problem, schedule and result
    counts = {"ran": 0, "skipped": 0, "failed": 0}
    for i, row in enumerate(rows):
        label = cpu_label if row.device == "cpu" else gpu_label
        head = [row.name, label or "gpu", row.dtype]
        left = args.budget - (time.perf_counter() - start)
        estimate = measured.get(row.family, row.guess * (0.05 if dry_run else 1.0))
        reserve = sum(
            measured.get(r.family, r.guess * (0.05 if dry_run else 1.0))
            for r in rows[i + 1 :]
            if r.reserved
        )
        note = None
        if row.device == "gpu" and not gpu:
            note = "skipped: no GPU"
        elif row.kind == "pamc" and version("blackjax", load=False) is None:
            note = "skipped: blackjax is absent on this machine (deepest.pamc needs it)"
        elif row.kind in ("laplace", "pamc") and "anneal" not in kept:
            note = "skipped: needs the result of the first row, which did not run"
        elif estimate + (0.0 if row.reserved else reserve) > left:
            note = (
                f"skipped: budget (estimate {estimate:.0f} s"
                + (
                    f" + {reserve:.0f} s kept for the CPU rows"
                    if reserve and not row.reserved
                    else ""
                )
                + f", {max(left, 0):.0f} s left)"
            )
        if note is not None:
            counts["skipped"] += 1
            table.row(head + ["—"] * (len(COLUMNS) - 4) + [note])
            continue
        began = time.perf_counter()
        try:
            devices = gpu if row.device == "gpu" else cpu
            keep = row == rows[0]  # the result Laplace and PAMC start from
            cells = RUNNERS[row.kind](row, sizes, devices, kept, keep)
        except Exception as e:  # one failed row must not lose the others
            traceback.print_exc()
            counts["failed"] += 1
            message = " ".join(f"{type(e).__name__}: {e}".split())[:200].replace("|", "/")
            table.row(head + ["—"] * (len(COLUMNS) - 4) + [f"FAILED: {message}"])
            continue
        measured[row.family] = time.perf_counter() - began
        counts["ran"] += 1
        table.row(head + cells + [f"ran ({measured[row.family]:.0f} s wall)"])
    table.line()
    table.line(
        f"rows: {counts['ran']} ran, {counts['skipped']} skipped, {counts['failed']} failed; "
        f"{time.perf_counter() - start:.0f} s of a {args.budget:.0f} s budget"
    )
    if dry_run and "pydantic" in sys.modules:
        table.line("pydantic was imported, which the device lacks: build the problems with `build`")
        sys.exit(1)
    if counts["failed"]:
        sys.exit(1)


def run_anneal(row: Row, sizes: Sizes, devices, kept: dict, keep: bool) -> list:
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import deepest

    problem, schedule, c = build(row.config, sizes.n_beta)
    n = sizes.paths if row.device == "gpu" else sizes.cpu_paths
    r = deepest.anneal(
        problem,
        schedule,
        n,
        jr.key(c["anneal"]["seed"]),
        minimiser=minimiser(row.minimiser, c),
        dtype=jnp.dtype(row.dtype),
        max_evaluations=sizes.max_evaluations or c["anneal"]["max_evaluations"],
        devices=devices,
        progress=False,
    )
    if keep:
        kept["anneal"] = (problem, schedule, r)
    run = r.stats["run_time"]
    return [
        f"{n} paths × {schedule.n_beta} β",
        f"{run:.2f}",
        f"{r.stats['compile_time']:.1f}",
        f"{1e3 * run / n:.3f} ms per path",
        f"{r.iterations.sum(0).mean():.0f} evaluations per path, converged "
        f"{np.mean(r.converged):.3f}, lowest final action {np.nanmin(r.action[-1]):.6g}",
    ]


def run_sweep(row: Row, sizes: Sizes, devices, kept: dict, keep: bool) -> list:
    import jax.random as jr
    import numpy as np

    import deepest

    k, n = sizes.sweep_settings, sizes.sweep_paths
    built = [build("L12", sizes.n_beta, seed=i, rf0=1e-6 if i % 2 == 0 else 1e-5) for i in range(k)]
    c = built[0][2]
    began = time.perf_counter()
    swept = deepest.sweep(
        [b[0] for b in built],
        [b[1] for b in built],
        n,
        jr.key(c["anneal"]["seed"]),
        minimiser=minimiser(row.minimiser, c),
        max_evaluations=sizes.max_evaluations or c["anneal"]["max_evaluations"],
        devices=devices,
        progress=False,
    )
    wall = time.perf_counter() - began
    compile_time = max(r.stats["compile_time"] for r in swept)
    run = wall - compile_time
    return [
        f"{k} settings × {n} paths × {built[0][1].n_beta} β",
        f"{run:.2f}",
        f"{compile_time:.1f}",
        f"{1e3 * run / (k * n):.3f} ms per path",
        f"wall {wall:.1f} s (compile included), converged "
        f"{np.mean([np.mean(r.converged) for r in swept]):.3f}",
    ]


def run_laplace(row: Row, sizes: Sizes, devices, kept: dict, keep: bool) -> list:
    import jax
    import numpy as np

    import deepest

    problem, schedule, result = kept["anneal"]
    n = result.action.shape[-1]
    with jax.default_device(devices[0]):
        began = time.perf_counter()
        deepest.laplace(problem, result)
        first_call = time.perf_counter() - began
        began = time.perf_counter()
        lap = deepest.laplace(problem, result)
        run = time.perf_counter() - began
    return [
        f"{n} paths, last β",
        f"{run:.2f}",
        f"{first_call - run:.1f}",
        f"{1e3 * run / n:.3f} ms per path",
        f"positive definite {int(np.sum(lap.positive_definite))}/{n}",
    ]


def run_pamc(row: Row, sizes: Sizes, devices, kept: dict, keep: bool) -> list:
    import jax
    import jax.random as jr
    import numpy as np

    import deepest

    problem, schedule, result = kept["anneal"]
    last = schedule.n_beta - 1
    with jax.default_device(devices[0]):
        mc = deepest.pamc(
            problem,
            schedule,
            sizes.chains,
            jr.key(2),
            sizes.draws,
            n_warmup=sizes.warmup,
            betas=[last - 1, last],
            save_betas=[],
            init=result,
        )
    # the second β reuses the first's compiled program
    run = mc.stats["run_time"] - mc.stats["first_beta_time"]
    steps = sizes.warmup + sizes.draws
    return [
        f"{sizes.chains} chains × ({sizes.warmup} + {sizes.draws}) draws × 2 β",
        f"{run:.2f}",
        f"{mc.stats['first_beta_time'] - run:.1f}",
        f"{sizes.chains / run:.1f} chains per s ({sizes.chains * steps / run:.0f} draws per s)",
        f"acceptance {np.mean(mc.acceptance[-1]):.2f}, {mc.stats['leapfrog_steps']} leapfrog steps",
    ]


RUNNERS: dict[str, Callable] = {
    "anneal": run_anneal,
    "sweep": run_sweep,
    "laplace": run_laplace,
    "pamc": run_pamc,
}


if __name__ == "__main__":
    main()
