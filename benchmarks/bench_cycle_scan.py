"""A design probe for issue 24's wall-time target (not a library feature): the cycle as one
compiled `lax.scan` over windows, on DAPPER's 'all' setting (benchmarks/dapper_data, made by
`make bench-dapper`), W = 6, carry "smoother", inflation 1.03: one Gauss–Newton path per
window (K steps at the final R_f from the forecast path), the exact Laplace Gaussian at two
nodes. The first windows come from `deepest.cycle` (its last window's datum is assimilated
twice, once there and once in the scan's first window: inside the burn-in). Prints the time
per window after compilation and DAPPER's RMSE after its burn-in (t > 20).

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_cycle_scan.py N_OBS K    # e.g. 800 5
"""

import os
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_dapper as b  # noqa: E402

import deepest  # noqa: E402
from deepest._annealing import banded_normal_equations, solve_block_tridiagonal  # noqa: E402
from deepest._cycling._forecast import posterior, run_model  # noqa: E402
from deepest._uncertainty._laplace import _Jacobian  # noqa: E402

W, INFL, N, K = 6, 1.03, int(sys.argv[1]), int(sys.argv[2])
f = b.load("all", False)
truth = f["xx"][f["kko"]][:N]
y = f["yy"][:N]
times = f["tto"][:N]
D = 40
model = deepest.models.Lorenz96(8.0)
rf = 1e6
mask = np.ones((W + 1, D), bool)
mask[:W] = False  # a later window: only the newest datum
data0 = deepest.Observations(times[: W + 1], y[: W + 1], tuple(range(D)), mask=mask)
template = deepest.Assimilation(
    model,
    data0,
    rm=1.0,
    dim=D,
    discretisation="rk4",
    background=deepest.Background(truth[0], cov=np.eye(D)),
)
n, d, p = template.banded_shape
rf_w = rf * W  # scaled: n_ref / n_m = W


def gauss_newton(problem, states, params):
    def res(s, q):
        return problem.unnormalised_banded_residuals(s, q, rf_w)

    def body(_, sp):
        s, q = sp
        ne = banded_normal_equations(_Jacobian(res, s, q), res(s, q), n, d, p, s.dtype)
        g = ne.grad
        ds, dq = solve_block_tridiagonal(
            ne.diagonal, ne.off, ne.border, ne.corner, -g[: n * d].reshape(n, d), -g[n * d :]
        )
        return s + ds, q + dq

    return jax.lax.fori_loop(0, K, body, (states, params))


def window(carry, k):
    z, P, path = carry  # background at the window's start, last path (to shift by 1)
    a = k  # window k ends at a + W
    ts = jax.lax.dynamic_slice_in_dim(jnp.asarray(times), a, W + 1)
    vals = jax.lax.dynamic_slice_in_dim(jnp.asarray(y), a, W + 1)
    bg = deepest.Background(z, cov=INFL * P)
    problem = eqx.tree_at(
        lambda q: (q.data.times, q.data.values, q.background), template, (ts, vals, bg)
    )
    # forecast path: last path shifted, then one model step
    nxt, _ = run_model(problem, ts[-2], path[-1], 1)
    start = jnp.concatenate([path[1:], nxt[1:]])
    s, q = gauss_newton(problem, start, jnp.zeros((0,)))
    u = problem.from_banded(s, q)
    mean, std, covs, ok = posterior(problem, u, jnp.asarray(rf_w), jnp.asarray([W, 1]))
    m = mean["path"]
    return (m[1], covs[1], m), (m[-1], jnp.sqrt(jnp.diagonal(covs[0])), m[0], std["path"][0])


@jax.jit
def run(z0, P0, path0):
    return jax.lax.scan(window, (z0, P0, path0), jnp.arange(1, N - W))


res0 = deepest.cycle(
    model,
    deepest.Observations(times[: W + 2], y[: W + 2], tuple(range(D)), truth=truth[: W + 2]),
    window=W,
    rm=1.0,
    key=jax.random.key(0),
    discretisation="rk4",
    inflation=INFL,
    background=deepest.Background(truth[0], diag=np.full(D, 2e-3)),
    progress=False,
)
z0, P0 = jnp.asarray(res0.background_mean), jnp.asarray(res0.background_cov)
path0 = jnp.asarray(res0.last_path)
t = time.perf_counter()
out = run(z0, P0, path0)
jax.block_until_ready(out)
t1 = time.perf_counter() - t
t = time.perf_counter()
out = run(z0, P0, path0)
jax.block_until_ready(out)
t2 = time.perf_counter() - t
ana, ana_std, smo, smo_std = (np.asarray(o) for o in out[1])
ends = np.arange(1, N - W) + W
keep = times[ends] > 20
e = np.sqrt(np.mean((ana - truth[ends]) ** 2, axis=1))[keep].mean()
starts = np.arange(1, N - W)
es = np.sqrt(np.mean((smo - truth[starts]) ** 2, axis=1))[times[starts] > 20].mean()
spread = np.sqrt(np.mean(ana_std[keep] ** 2, axis=1)).mean()
print(
    f"{N - W - 1} windows, K = {K}: compile+run {t1:.1f} s, run {1e3 * t2 / (N - W - 1):.2f} "
    f"ms per window; analysis RMSE {e:.4f}, smoothed (lag {W}) {es:.4f}, spread a {spread:.4f}"
)
