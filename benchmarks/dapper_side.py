"""The DAPPER half of the side-by-side Lorenz-96 benchmark (issue 24): DAPPER 1.8.1's own
twin experiment, its iEnKS and EnKF, with everything written to `.npz` files that
`bench_dapper.py` (the `deepest` half) reads.

Runs only in the DAPPER venv (`.venv-dapper`, Python >= 3.12, `make bench-dapper`); it
imports neither `deepest` nor `jax`.

**Set-up.** `dapper.mods.Lorenz96.sakov2008`: 40 variables, F = 8, RK4 with dt = 0.05, no
model noise, X0 = N(e_0, 0.001 I), observation error R = I. Four observation settings,
each with its own truth and observations simulated by DAPPER (`HMM.simulate`, seed fixed):

| setting | observed indices | dko | dto |
|---|---|---|---|
| `all` | 0, 1, …, 39 (DAPPER's default HMM) | 1 | 0.05 |
| `half` | 0, 2, …, 38 | 1 | 0.05 |
| `third` | 0, 3, …, 39 (14) | 2 | 0.1 |
| `sparse` | 0, 1, …, 39 | 4 | 0.2 |

DAPPER's time convention (`dapper.tools.chronos.Chronology`): model times tt[k] = k·dt,
k = 0 … K; observation ko = 0 … Ko is at model step kko[ko] = (ko + 1)·dko, so there is no
observation at t = 0 and K = (Ko + 1)·dko. The burn-in is a time, `BurnIn`: the averages
use the observation times with tto > BurnIn (strict; `tseq.masko`), the first of which is
`ioBurnIn`. Here BurnIn = 20 (sakov2008's 2·Tplot) and each setting has `--n-avg` (1000)
observation times after it.

**Methods** (one ensemble size N for both, seed reset before each so both start from the
same draws of X0):

- `iEnKS('Sqrt', N, Lag, nIter=10, wtol=1e-5, infl, rot=True)`: Gauss–Newton iterations,
  at most 10, stopped when |dw|² < wtol·N (the docstring's recommended 1e-5);
- `EnKF('Sqrt', N, infl, rot=True)`: the ETKF, sakov2008's Table 1 row (N = 24,
  infl = 1.013, rot=True, expected rmse.a 0.18 on `all`).

**What f, a and s mean** (dapper/da_methods/variational.py, `iEnKS.assimilate` and
`iEnKS_update`). The data-assimilation window (DAW) of cycle ko ends at observation ko and
starts at observation kLag = ko − Lag (at t = 0 while kLag < 0); it holds the observations
kLag + 1 … ko, but only observation ko is "new": the earlier ones were assimilated by
earlier windows, whose result is the ensemble at the window's start.

- `f[ko]`: the first iteration's ensemble (w = 0, T = I), i.e. the ensemble at the start of
  the window (the previous window's smoothed ensemble at kLag, after inflation and
  rotation, propagated one cycle) forecast through the Lag cycles to tto[ko]. It has used
  the observations up to ko − 1; for Lag = 1 it is the usual one-cycle forecast.
- `a[ko]`: the filter analysis at tto[ko] using the observations up to ko: the last
  iteration's forecast at tto[ko] plus the linearised increment
  (dw + T − T_old)·Xf (no extra model run; equal to the EnKF's analysis when nIter = 1).
  Assessed before inflation and rotation.
- `s[kLag]`: the smoothed estimate at tto[kLag] = tto[ko − Lag], using the observations up
  to ko = kLag + Lag (Lag observations after it), assessed after inflation and rotation.
  The last Lag windows (ko = Ko + 1 … Ko + Lag) have no new observation; they only shift,
  so `s[Ko − j]` uses the observations up to Ko (`s[Ko]` is then the analysis at Ko,
  inflated).

For the EnKF (dapper/da_methods/ensemble.py) `f[ko]` is the forecast at tto[ko] and `a[ko]`
the analysis there after inflation and rotation; it has no `s`.

**RMSE and spread** (dapper/stats.py, `Stats.assess_ens`): at each time, with ensemble mean
mu and truth x, err = mu − x and spread = the per-component ensemble standard deviation
(unbiased variance, divisor N − 1); `rmse` = `err.rms` = sqrt(mean over the 40
components of err²), and the "spread" here is `rmv` = `spread.rms` = sqrt(mean over
components of the ensemble variance). The averages (`Stats.average_in_time`) are plain
means over the observation times after the burn-in of these per-time values (not the
square root of a mean square), e.g. `xp.avrgs.err.rms.a.val` ("rmse.a").

**Timing.** `duration` is the wall time of `xp.assimilate` (DAPPER's own timer), including
DAPPER's per-time statistics; the spectral statistics (SVD, rank histogram) are switched
off (`rc.comps.max_spectral = 0`) to keep that overhead small.

**Output** (`--out`, default `benchmarks/dapper_data/`): `dapper_<setting>.npz` each, with
the truth `xx` (K + 1, 40), `tt` (K + 1,), `tto` and `kko` (Ko + 1,), `yy`
(Ko + 1, n_observed), `obs_inds`, `dt`, `dko`, `dto`, `burn_in_time`, `burn_in_obs` (the
first averaged observation index), `masko` (Ko + 1,) (the averaged times), the seed, and
per method m in (`ienks`, `enkf`) and subscript s in (f, a, s):
`{m}_rmse_{s}` and `{m}_spread_{s}` (Ko + 1,), `{m}_mu_{s}` (Ko + 1, 40),
`{m}_rmse_{s}_avg` and `{m}_spread_{s}_avg` (scalars, DAPPER's averages), and the
settings, `{m}_seconds` and `{m}_seconds_per_obs`.

    OPENBLAS_NUM_THREADS=1 .venv-dapper/bin/python benchmarks/dapper_side.py [--quick]
        [--n-avg 1000] [--n-ens 24] [--lag 4] [--out benchmarks/dapper_data]
"""

import argparse
import os
import time

import numpy as np

os.environ.setdefault("DAPPER_LIVEPLOTTING", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

import dapper  # noqa: E402
import dapper.da_methods as da  # noqa: E402
import dapper.mods as modelling  # noqa: E402
import dapper.tools.progressbar  # noqa: E402
from dapper.mods.Lorenz96 import sakov2008  # noqa: E402

dapper.rc.liveplotting = False
dapper.rc.comps.max_spectral = 0
dapper.tools.progressbar.disable_progbar = True

NX = 40
BURN_IN = 20.0  # sakov2008: BurnIn = 2 * Tplot
SEED = 3000

# name: (observed indices, dko, iEnKS inflation, EnKF inflation); the inflations tuned
# briefly (N = 24, Lag = 4, this script's seed and sizes) for the lowest rmse.a that stays
# clear of divergence.
SETTINGS = {
    "all": (np.arange(0, NX), 1, 1.02, 1.02),
    "half": (np.arange(0, NX, 2), 1, 1.02, 1.03),
    "third": (np.arange(0, NX, 3), 2, 1.02, 1.15),
    "sparse": (np.arange(0, NX), 4, 1.02, 1.10),
}


def make_hmm(obs_inds, dko, n_obs, burn_in):
    """sakov2008's HMM with another observation operator and schedule.

    **Arguments:**

    - `obs_inds`: the observed components.
    - `dko`: model steps between observations.
    - `n_obs`: the number of observation times, Ko + 1.
    - `burn_in`: DAPPER's `BurnIn` (a time).

    **Returns:**

    A `dapper.mods.HiddenMarkovModel`.
    """
    hmm = sakov2008.HMM.copy()
    hmm.tseq = modelling.Chronology(dt=sakov2008.HMM.tseq.dt, dko=dko, Ko=n_obs - 1, BurnIn=burn_in)
    hmm.Obs = modelling.TimeDependentOperator(
        modelling.Operator(**modelling.partial_Id_Obs(NX, obs_inds), noise=1)
    )
    hmm.liveplotters = []
    return hmm


def run_method(xp, hmm, xx, yy, seed):
    """Assimilate, average in time, and collect the arrays of one method."""
    dapper.set_seed(seed)
    xp.assimilate(hmm, xx, yy)
    xp.stats.average_in_time()
    out = {"seconds": xp.stats.duration}
    for sub in "fas":
        if not hasattr(xp.stats.err.rms, sub):
            continue
        out[f"rmse_{sub}"] = getattr(xp.stats.err.rms, sub)
        out[f"spread_{sub}"] = getattr(xp.stats.spread.rms, sub)
        out[f"mu_{sub}"] = getattr(xp.stats.mu, sub)
        out[f"rmse_{sub}_avg"] = getattr(xp.avrgs.err.rms, sub).val
        out[f"spread_{sub}_avg"] = getattr(xp.avrgs.spread.rms, sub).val
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 observation times")
    parser.add_argument("--n-avg", type=int, default=1000)
    parser.add_argument("--n-ens", type=int, default=24)
    parser.add_argument("--lag", type=int, default=4)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "dapper_data"))
    args = parser.parse_args()
    names = [s for s in args.settings.split(",") if s]
    bad = [s for s in names if s not in SETTINGS]
    if bad:
        parser.error(f"unknown settings {bad}; choose from {list(SETTINGS)}")
    if args.n_ens < 2 or args.lag < 1 or args.n_avg < 1:
        parser.error("need --n-ens >= 2, --lag >= 1, --n-avg >= 1")
    os.makedirs(args.out, exist_ok=True)

    rows = []
    for name in names:
        obs_inds, dko, infl_ienks, infl_enkf = SETTINGS[name]
        dto = dko * sakov2008.HMM.tseq.dt
        if args.quick:
            n_burn, n_avg = 20, 40
            burn_in = (n_burn - 0.5) * dto
        else:
            n_burn, n_avg = int(round(BURN_IN / dto)), args.n_avg
            burn_in = BURN_IN
        hmm = make_hmm(obs_inds, dko, n_burn + n_avg, burn_in)
        seed = SEED
        dapper.set_seed(seed)
        xx, yy = hmm.simulate()
        yy = np.stack(list(yy))

        xps = {
            "ienks": da.iEnKS(
                "Sqrt",
                N=args.n_ens,
                Lag=args.lag,
                nIter=10,
                wtol=1e-5,
                infl=infl_ienks,
                rot=True,
            ),
            "enkf": da.EnKF("Sqrt", N=args.n_ens, infl=infl_enkf, rot=True),
        }
        data = dict(
            xx=xx,
            tt=hmm.tseq.tt,
            tto=hmm.tseq.tto,
            kko=hmm.tseq.kko,
            yy=yy,
            obs_inds=obs_inds,
            dt=hmm.tseq.dt,
            dko=dko,
            dto=hmm.tseq.dto,
            burn_in_time=hmm.tseq.BurnIn,
            burn_in_obs=hmm.tseq.ioBurnIn,
            masko=hmm.tseq.masko,
            seed=seed,
            n_ens=args.n_ens,
            ienks_lag=args.lag,
            ienks_n_iter=10,
            ienks_wtol=1e-5,
            ienks_infl=infl_ienks,
            enkf_infl=infl_enkf,
            rot=True,
        )
        for m, xp in xps.items():
            t0 = time.perf_counter()
            res = run_method(xp, hmm, xx, yy, seed)
            res["wall"] = time.perf_counter() - t0
            res["seconds_per_obs"] = res["seconds"] / len(yy)
            for key, val in res.items():
                if key != "wall":
                    data[f"{m}_{key}"] = np.asarray(val)
            rows.append((name, m, res))
        path = os.path.join(args.out, f"dapper_{name}.npz")
        np.savez(path, **data)
        print(f"wrote {path}: Ko+1 = {len(yy)}, burn-in obs = {hmm.tseq.ioBurnIn}")

    print()
    print(
        "| setting | method | rmse f | rmse a | rmse s | spread f | spread a | "
        "spread s | s / obs time |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m, res in rows:
        cells = [
            f"{res[f'{q}_{sub}_avg']:.4f}" if f"{q}_{sub}_avg" in res else "—"
            for q in ("rmse", "spread")
            for sub in "fas"
        ]
        print(
            f"| {name} | {m} | " + " | ".join(cells) + f" | {res['seconds_per_obs'] * 1e3:.2f} ms |"
        )


if __name__ == "__main__":
    main()
