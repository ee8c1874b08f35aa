"""Cut DAPPER's `half` run (benchmarks/dapper_data/dapper_half.npz, made by `make
bench-dapper`) to what notebook 07 needs, so that the notebook runs without DAPPER.

Keeps the first 600 observation times: their times `tto`, the observations `yy`, the truth
at them `xx[kko]` (both float32, which halves the file; the notebook casts them back to
float64), `obs_inds`, `dko`, `burn_in_time` and DAPPER's iEnKS RMSE and spread per time of
the analysis and the smoothed estimate.

    python notebooks/data/make_dapper_half.py
"""

import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "..", "..", "benchmarks", "dapper_data", "dapper_half.npz")
N_OBS = 600


def main():
    f = np.load(SOURCE)
    keep = slice(0, N_OBS)
    out = {
        "tto": f["tto"][keep],
        "yy": f["yy"][keep].astype(np.float32),
        "truth": f["xx"][f["kko"][keep]].astype(np.float32),
        "obs_inds": f["obs_inds"],
        "dko": f["dko"],
        "burn_in_time": f["burn_in_time"],
    }
    for kind in "as":
        for stat in ("rmse", "spread"):
            out[f"ienks_{stat}_{kind}"] = f[f"ienks_{stat}_{kind}"][keep].astype(np.float32)
    np.savez_compressed(os.path.join(HERE, "dapper_half.npz"), **out)


if __name__ == "__main__":
    main()
