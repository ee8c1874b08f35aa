"""The serial baseline of the authors' code (varanneal): scipy L-BFGS-B, one path at a time.

gtol = ftol = 1e-8, warm start across β, the same action and data as `deepest.anneal`, the
gradient from a jitted `jax.value_and_grad`, the problem's box (`problem.bounds()`) passed
to L-BFGS-B as varanneal passes its bounds. Compile time is measured apart.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jax.flatten_util import ravel_pytree


def serial_anneal(problem, schedule, init, ftol=1e-8, gtol=1e-8, maxiter=15000, max_seconds=None):
    """Anneal each path of `init` (leading axis n_paths) one after another with scipy.

    With `max_seconds`, each path stops after the first β that ends past that budget
    (`n_beta_done` says how many β's each path finished; later levels NaN).

    **Returns:** dict with `action`, `measurement_error`, `model_error`, `iterations`
    (function evaluations), `nit` ((n_beta, n_paths) each), `n_beta_done` (n_paths,),
    `run_time`, `compile_time`.
    """
    first = jax.tree.map(lambda a: a[0], init)
    _, unravel = ravel_pytree(first)

    @jax.jit
    def value_and_grad(y, rf):
        return jax.value_and_grad(lambda y: problem.action(unravel(y), rf))(y)

    @jax.jit
    def errors(y):
        u = unravel(y)
        return problem.measurement_error(u), problem.model_error(u)

    rfs = np.asarray(schedule.rf)
    y_first = np.asarray(ravel_pytree(first)[0])
    box = problem.bounds()
    bounds = None
    if box is not None:
        lower, upper = (np.asarray(ravel_pytree(b)[0], dtype=np.float64) for b in box)
        bounds = scipy.optimize.Bounds(lower, upper)
    start = time.perf_counter()
    jax.block_until_ready(value_and_grad(y_first, rfs[0]))
    jax.block_until_ready(errors(y_first))
    compile_time = time.perf_counter() - start

    n_paths = jax.tree.leaves(init)[0].shape[0]
    shape = (schedule.n_beta, n_paths)
    out = {k: np.full(shape, np.nan) for k in ("action", "measurement_error", "model_error")}
    out["iterations"] = np.zeros(shape, int)
    out["nit"] = np.zeros(shape, int)
    out["n_beta_done"] = np.zeros(n_paths, int)
    start = time.perf_counter()
    for p in range(n_paths):
        path_start = time.perf_counter()
        path = jax.tree.map(lambda a, p=p: a[p], init)
        y = np.asarray(ravel_pytree(path)[0], dtype=np.float64)
        for b, rf in enumerate(rfs):
            rf = jnp.asarray(rf)

            def fg(y, rf=rf):
                f, g = value_and_grad(y, rf)
                return float(f), np.asarray(g, dtype=np.float64)

            res = scipy.optimize.minimize(
                fg,
                y,
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"ftol": ftol, "gtol": gtol, "maxiter": maxiter, "maxfun": 10 * maxiter},
            )
            y = res.x
            meas, model = errors(y)
            out["action"][b, p] = res.fun
            out["measurement_error"][b, p] = float(meas)
            out["model_error"][b, p] = float(model)
            out["iterations"][b, p] = res.nfev
            out["nit"][b, p] = res.nit
            out["n_beta_done"][p] = b + 1
            if max_seconds is not None and time.perf_counter() - path_start > max_seconds:
                break
    out["run_time"] = time.perf_counter() - start
    out["compile_time"] = compile_time
    out["final"] = y
    return out
