"""`deepest.cycle` against DAPPER's iEnKS and EnKF on DAPPER's own Lorenz-96 benchmark
(issue 24), on identical truth and observations.

`benchmarks/dapper_side.py` (run by `make bench-dapper` in its own Python 3.12
environment with DAPPER 1.8.1) generates `dapper.mods.Lorenz96.sakov2008`'s truth and
observations for four observation settings (all 40 components every 0.05; every other
component every 0.05; every third every 0.1; all every 0.2), runs iEnKS (N = 24, Lag 4)
and EnKF (N = 24) on them and writes `benchmarks/dapper_data/dapper_<setting>.npz`. This
script reads those files and runs `deepest.cycle` on the same data: the model is DAPPER's
(Lorenz-96, F = 8, one RK4 step of 0.05 per grid step: `discretisation="rk4"`,
`steps_per_obs` = DAPPER's `dko`), R_m = 1 (R = I), and the first window's background is
DAPPER's initial ensemble's distribution (variance 0.001 about the initial state) carried
to the first observation time by the model. Statistics are DAPPER's (RMSE and spread per
time, averaged over the times after its burn-in, `tto > 20`), from the same `.npz`.

Wall time per observation time: DAPPER's assimilation time over its observation times
against `deepest.cycle`'s whole call over the same, twice in one process: the first call
compiling its programs, the second reusing them; and its steady state (the mean window
after the first chunk of compiled windows), in one run on this CPU.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_dapper.py [--settings all half third
        sparse] [--window W] [--inflation I] [--paths N] [--later anneal] [--quick]
        [--breakdown]
"""

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import json
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import deepest  # noqa: E402
from deepest._cycling._gauss_newton import CHUNK  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "dapper_data")
SETTINGS = ("all", "half", "third", "sparse")
# Window (observation intervals) per setting and the inflation of the carried covariance,
# chosen by measurement (see BENCHMARKS.md: windows 2–8, inflation 1.02–1.1 tried).
WINDOWS = {"all": 6, "half": 6, "third": 8, "sparse": 6}
INFLATION = {"all": 1.03, "half": 1.03, "third": 1.05, "sparse": 1.03}


def _rk4(x, h=0.05, forcing=8.0):
    def f(x):
        return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + forcing

    k1 = f(x)
    k2 = f(x + h / 2 * k1)
    k3 = f(x + h / 2 * k2)
    k4 = f(x + h * k3)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def load(setting: str, quick: bool):
    """DAPPER's data of one setting, as a dict of arrays (cut to ~100 times with `quick`)."""
    f = dict(np.load(os.path.join(DATA, f"dapper_{setting}.npz")))
    if quick:
        n, total = int(f["burn_in_obs"]) + 60, f["tto"].shape[0]
        for key in list(f):
            if key not in ("xx", "tt") and np.ndim(f[key]) >= 1 and f[key].shape[0] == total:
                f[key] = f[key][:n]
    return f


def run(setting: str, window: int, n_paths: int, quick: bool, inflation: float, later: str) -> dict:
    f = load(setting, quick)
    dko, observed = int(f["dko"]), tuple(int(i) for i in f["obs_inds"])
    truth = f["xx"][f["kko"]]
    data = deepest.Observations(f["tto"], f["yy"], observed, truth=truth, noise=1.0)
    # DAPPER's initial ensemble: N(x₀, 0.001·I) at t = 0, the first observation dko steps on.
    x0 = f["xx"][0] + np.sqrt(1e-3) * np.random.default_rng(0).normal(size=40)
    for _ in range(dko):
        x0 = _rk4(x0)
    background = deepest.Background(np.asarray(x0), diag=np.full(40, 2e-3))
    calls = []
    for _ in range(2):  # the first call compiles, the second reuses
        start = time.perf_counter()
        result = deepest.cycle(
            deepest.models.Lorenz96(8.0),
            data,
            window=window,
            rm=1.0,
            key=jr.key(0),
            discretisation="rk4",
            steps_per_obs=dko,
            n_paths=n_paths,
            inflation=inflation,
            background=background,
            later=later,
            progress=False,
        )
        calls.append(time.perf_counter() - start)
    # windows annealed: the first, and any the compiled program left to the annealer
    annealed = int(np.sum(np.isfinite(result.action[:, -1, 1:]).any(axis=1)))
    steady = float(np.mean(result.seconds[1 + CHUNK :])) / result.settings["shift"]
    burn_in = float(f["burn_in_time"]) - float(f["tto"][0])
    ours_rmse = result.rmse(truth, burn_in=burn_in)
    ours_spread = result.spread(burn_in=burn_in)
    n_obs = len(f["tto"])
    row = {
        "setting": setting,
        "n_obs": n_obs,
        "averaged": int(np.sum(f["masko"])),
        "window": window,
        "n_paths": n_paths,
        "inflation": inflation,
        "deepest": {
            "rmse": ours_rmse,
            "spread": ours_spread,
            "seconds_per_obs": calls[0] / n_obs,
            "compiled_seconds_per_obs": calls[1] / n_obs,
            "steady_seconds_per_obs": steady,
            "annealed_windows": annealed,
            "later": later,
            "stopped": result.stopped,
        },
    }
    for method, kinds in (("ienks", "fas"), ("enkf", "fa")):
        row[method] = {
            "rmse": {k: float(f[f"{method}_rmse_{k}_avg"]) for k in kinds},
            "spread": {k: float(f[f"{method}_spread_{k}_avg"]) for k in kinds},
            "seconds_per_obs": float(f[f"{method}_seconds_per_obs"]),
        }
    return row


def breakdown(n_obs: int = 170) -> None:
    """Where a window's time goes (the 'all' setting, W = 6): each stage of `cycle` timed
    (results made ready), after a first call that compiles."""
    import collections

    from deepest._cycling import _cycle as stages

    spent = collections.defaultdict(float)

    def timed(name, fn):
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            if not isinstance(out, deepest.AnnealResult):
                jax.block_until_ready(out)
            spent[name] += time.perf_counter() - start
            return out

        return wrapped

    stages.anneal = timed("annealing (the first window)", stages.anneal)
    stages._anneal_checked = timed("annealing (windows left to it)", stages._anneal_checked)
    stages.run_chunk = timed("compiled windows (Gauss–Newton, Laplace, forecast)", stages.run_chunk)
    stages._State.record = timed("recording (host)", stages._State.record)
    f = load("all", False)
    truth = f["xx"][f["kko"]]
    model = deepest.models.Lorenz96(8.0)
    settings = dict(
        window=6,
        rm=1.0,
        key=jr.key(0),
        discretisation="rk4",
        inflation=INFLATION["all"],
        background=deepest.Background(truth[0], diag=np.full(40, 2e-3)),
        progress=False,
    )
    for n in (n_obs, n_obs):  # the first compiles
        spent.clear()
        data = deepest.Observations(f["tto"][:n], f["yy"][:n], tuple(range(40)), truth=truth[:n])
        start = time.perf_counter()
        result = deepest.cycle(model, data, **settings)
        total = time.perf_counter() - start
    w = result.n_windows
    print(f"{w} windows: {1e3 * total / w:.1f} ms per window")
    for name, seconds in spent.items():
        print(f"  {name}: {1e3 * seconds / w:.1f} ms")
    print(f"  the rest (host work): {1e3 * (total - sum(spent.values())) / w:.1f} ms")


def table(rows) -> str:
    lines = [
        "| setting | method | RMSE f | RMSE a | RMSE s | spread f | spread a | spread s "
        "| ms per obs time (deepest: steady state) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for name, key in (("deepest.cycle", "deepest"), ("iEnKS", "ienks"), ("EnKF", "enkf")):
            r = row[key]
            cells = (
                [
                    f"{r['rmse'].get(k, float('nan')):.3f}"
                    for k in ("forecast", "analysis", "smoothed")
                ]
                if key == "deepest"
                else [f"{r['rmse'].get(k, float('nan')):.3f}" for k in "fas"]
            )
            spread = (
                [
                    f"{r['spread'].get(k, float('nan')):.3f}"
                    for k in ("forecast", "analysis", "smoothed")
                ]
                if key == "deepest"
                else [f"{r['spread'].get(k, float('nan')):.3f}" for k in "fas"]
            )
            ms = f"{1e3 * r['seconds_per_obs']:.1f}"
            if key == "deepest":
                ms = (
                    f"{1e3 * r['steady_seconds_per_obs']:.2f} (calls: "
                    f"{1e3 * r['seconds_per_obs']:.1f} compiling, "
                    f"{1e3 * r['compiled_seconds_per_obs']:.2f} compiled)"
                )
            label = row["setting"]
            if key == "deepest":
                label += f" (W={row['window']}, infl {row['inflation']})"
            lines.append(f"| {label} | {name} | " + " | ".join(cells + spread) + f" | {ms} |")
    return "\n".join(lines).replace("nan", "–")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--paths", type=int, default=4)
    parser.add_argument("--inflation", type=float, default=None)
    parser.add_argument("--later", default="gauss_newton", choices=("gauss_newton", "anneal"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    parser.add_argument("--breakdown", action="store_true", help="time a window's stages")
    args = parser.parse_args()
    if not os.path.exists(os.path.join(DATA, f"dapper_{args.settings[0]}.npz")):
        raise SystemExit(
            f"No DAPPER data in {DATA}: run `make bench-dapper` (it makes them with DAPPER "
            "1.8.1 in its own Python 3.12 environment, then runs this script)."
        )
    if args.breakdown:
        return breakdown()
    rows = []
    for setting in args.settings:
        window = args.window or WINDOWS[setting]
        inflation = args.inflation or INFLATION[setting]
        row = run(setting, window, args.paths, args.quick, inflation, args.later)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__}, deepest {deepest.__version__}"
    )
    print(table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
