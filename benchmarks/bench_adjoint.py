"""Gradients through continuous layers: the partner costate sweep and the reversible sweep
against diffrax's adjoints, side by side in one run.

Methods (all at fixed steps h = T/n, float64):

- `costate`: `deepest.ContinuousNetwork(adjoint="costate")`, Tsit5 forward, exact partner sweep.
- `reversible`: `adjoint="reversible"`, `ReversibleRK(Tsit5)` with its default coupling
  rate κ = 1 (λ = exp(−κh) per step, so the rebuild amplifies rounding by at most e^{κT}
  along its spurious mode). On the neural ODE at 10⁴ and 10⁵ steps also with the fixed
  coupling λ = 0.999 (`reversible λ=0.999`), whose amplification 1.001^n grows with n;
  on Lorenz-63 also with κ = 23 (`reversible κ=23`), which keeps the forward scheme
  stable there (λ = e^{−0.23} ≈ 0.79 < R(hσ) ≈ 0.8 for the field's most contracting
  Jacobian eigenvalue σ ≈ −22.8).
- `RecursiveCheckpoint`: diffrax `RecursiveCheckpointAdjoint`, Tsit5 (the time baseline).
- `Backsolve`: diffrax `BacksolveAdjoint`, Tsit5 (re-integrates the state backward).
- `Direct`: diffrax `DirectAdjoint`, Tsit5.
- `RevHeun+Backsolve`: diffrax `ReversibleHeun` with `BacksolveAdjoint`.

Columns: `grad err` is the relative 2-norm error of the parameter gradient against JAX
autodiff (RecursiveCheckpointAdjoint) through the *same* discrete forward pass (Tsit5 for
the first four, ReversibleRK for `reversible`, ReversibleHeun for the last); `disc err` is
that reference's own discretisation error, against Tsit5 at 8× finer steps (omitted
beyond 10⁵ fine steps, and at width 256 beyond 8·10³); `time` is one gradient evaluation
with compile excluded (the minimum over repeated runs, see `measure`), `/RC` its ratio to
RecursiveCheckpoint; `compile` the lower+compile time; `memory`
the compiled peak (temp + arguments + outputs, from `memory_analysis()`).

Table (c) walks the Lorenz-63 horizon to find where exact reversal breaks: the
reversible gradient's error against autodiff through the same scheme, next to the
field's own backward expansion 1/s_min, s_min the smallest singular value of the flow's
Jacobian ∂x(T)/∂x(0) (from the exact `costate` sweep); ε/s_min is the rounding error any
exact reversal of the states must suffer.

Run: `python benchmarks/bench_adjoint.py` (`--part neural|lorenz|horizon` for one table,
`--quick` for a small grid, `--skip-large` to leave out width 256 at 10⁴ steps, the
slowest case, `--large-only` for that case alone).
"""

import argparse
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import deepest
from deepest.integrators import ReversibleRK

jax.config.update("jax_enable_x64", True)


class TanhMLP(eqx.Module):
    """F(x) = W₂ tanh(W₁ x + b₁) + b₂, weights N(0, 1/width)."""

    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array

    def __init__(self, width, key):
        k1, k2, k3 = jr.split(key, 3)
        self.w1 = jr.normal(k1, (width, width)) / jnp.sqrt(width)
        self.b1 = jr.normal(k2, (width,)) * 0.1
        self.w2 = jr.normal(k3, (width, width)) / jnp.sqrt(width)
        self.b2 = jnp.zeros(width)

    def __call__(self, t, x):
        return self.w2 @ jnp.tanh(self.w1 @ x + self.b1) + self.b2


class Lorenz63(eqx.Module):
    """Lorenz-63 with trainable (σ, ρ, β)."""

    sigma: jax.Array
    rho: jax.Array
    beta: jax.Array

    def __call__(self, t, x):
        return jnp.stack(
            [
                self.sigma * (x[1] - x[0]),
                x[0] * (self.rho - x[2]) - x[1],
                x[0] * x[1] - self.beta * x[2],
            ]
        )


TERM = diffrax.ODETerm(lambda t, x, field: field(t, x))
COUPLINGS = {
    "reversible": dict(),
    "reversible λ=0.999": dict(coupling=0.999),
    "reversible κ=23": dict(coupling_rate=23.0),
}


def _loss(x_final, weights):
    return jnp.dot(weights, x_final)


def make_grad(method, t1, n_steps, x0, weights):
    """A function field -> dC/d(field) for one method."""
    if method == "costate" or method.startswith("reversible"):
        solver = diffrax.Tsit5()
        if method == "costate":
            adjoint = "costate"
        else:
            scheme = method.removesuffix(" (autodiff)")
            solver = ReversibleRK(solver, **COUPLINGS[scheme])
            adjoint = "autodiff" if method.endswith("(autodiff)") else "reversible"

        def loss(field):
            net = deepest.ContinuousNetwork(field, t1, n_steps, solver=solver, adjoint=adjoint)
            return _loss(net(x0), weights)

        return jax.grad(loss)
    solver, adjoint = {
        "RecursiveCheckpoint": (diffrax.Tsit5(), diffrax.RecursiveCheckpointAdjoint()),
        "Backsolve": (diffrax.Tsit5(), diffrax.BacksolveAdjoint()),
        "Direct": (diffrax.Tsit5(), diffrax.DirectAdjoint()),
        "RevHeun+Backsolve": (diffrax.ReversibleHeun(), diffrax.BacksolveAdjoint()),
        "RevHeun (autodiff)": (
            diffrax.ReversibleHeun(),
            diffrax.RecursiveCheckpointAdjoint(),
        ),
    }[method]

    def loss(field):
        sol = diffrax.diffeqsolve(
            TERM,
            solver,
            0.0,
            t1,
            t1 / n_steps,
            x0,
            args=field,
            adjoint=adjoint,
            max_steps=n_steps,
        )
        return _loss(sol.ys[-1], weights)

    return jax.grad(loss)


def measure(method, field, t1, n_steps, x0, weights):
    grad = jax.jit(make_grad(method, t1, n_steps, x0, weights))
    start = time.perf_counter()
    compiled = grad.lower(field).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    memory = (
        analysis.temp_size_in_bytes
        + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
    )
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(field))
    warm_up = time.perf_counter() - start
    # The machine is shared: the minimum over repeated runs after the warm-up run, 10 for
    # calls under 0.1 s, 3 under 2 s; slower calls are timed by the warm-up run alone.
    repeats = 10 if warm_up < 0.1 else 3 if warm_up < 2.0 else 0
    seconds = [warm_up] if repeats == 0 else []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(field))
        seconds.append(time.perf_counter() - start)
    return result, min(seconds), compile_s, memory


def relative_error(tree, reference):
    flat = jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(tree)])
    ref = jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(reference)])
    return float(jnp.linalg.norm(flat - ref) / jnp.linalg.norm(ref))


REFERENCE = {
    "costate": "RecursiveCheckpoint",
    "Backsolve": "RecursiveCheckpoint",
    "Direct": "RecursiveCheckpoint",
    "RecursiveCheckpoint": "RecursiveCheckpoint",
    "reversible": "reversible (autodiff)",
    "reversible λ=0.999": "reversible λ=0.999 (autodiff)",
    "reversible κ=23": "reversible κ=23 (autodiff)",
    "RevHeun+Backsolve": "RevHeun (autodiff)",
}


def run_case(label, field, t1, n_steps, x0, weights, methods, fine):
    results = {}
    for method in methods:
        results[method] = measure(method, field, t1, n_steps, x0, weights)
    for method in set(REFERENCE[m] for m in methods) - set(results):
        results[method] = measure(method, field, t1, n_steps, x0, weights)
    exact = None
    if fine:
        exact = measure("RecursiveCheckpoint", field, t1, 8 * n_steps, x0, weights)[0]
    base_time = results["RecursiveCheckpoint"][1]
    rows = []
    for method in methods:
        grad, seconds, compile_s, memory = results[method]
        reference = results[REFERENCE[method]][0]
        error = relative_error(grad, reference)
        disc = "—" if exact is None else f"{relative_error(reference, exact):.1e}"
        rows.append(
            f"| {label} | {method} | {error:.1e} | {disc} | {seconds * 1e3:.1f} ms | "
            f"{seconds / base_time:.2f} | {compile_s:.1f} s | {memory / 2**20:.2f} MiB |"
        )
    return rows


HEADER = (
    "| case | method | grad err | disc err | time | /RC | compile | memory |\n"
    "|---|---|---|---|---|---|---|---|"
)
ALL = ["costate", "reversible", "RecursiveCheckpoint", "Backsolve", "Direct", "RevHeun+Backsolve"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a small grid")
    parser.add_argument("--skip-large", action="store_true", help="no width 256 at 10⁴ steps")
    parser.add_argument("--large-only", action="store_true", help="width 256 at 10⁴ steps only")
    parser.add_argument("--part", choices=["all", "neural", "lorenz", "horizon"], default="all")
    args = parser.parse_args()
    key = jr.key(0)
    if args.quick:
        neural_grid = [(32, 100), (32, 1000)]
        horizons = [1.0, 2.0]
    else:
        neural_grid = [
            (32, 100),
            (32, 1_000),
            (32, 10_000),
            (32, 100_000),
            (256, 100),
            (256, 1_000),
            (256, 10_000),
        ]
        if args.skip_large:
            neural_grid.remove((256, 10_000))
        if args.large_only:
            neural_grid = [(256, 10_000)]
        horizons = [1.0, 2.0, 5.0, 10.0]
    if args.part in ("all", "neural"):
        neural(key, neural_grid)
    if args.part in ("all", "lorenz"):
        lorenz(horizons)
    if args.part in ("all", "horizon"):
        lorenz_horizon([0.5, 1.0, 1.5, 2.0])


def neural(key, neural_grid):
    print("### (a) Smooth neural ODE, T = 1\n")
    print(HEADER)
    for width, n_steps in neural_grid:
        field = TanhMLP(width, jr.fold_in(key, width))
        x0 = jr.normal(jr.fold_in(key, 1), (width,))
        weights = jr.normal(jr.fold_in(key, 2), (width,))
        methods = list(ALL)
        if n_steps >= 10_000 and width == 32:
            methods.insert(2, "reversible λ=0.999")
        fine = 8 * n_steps <= 100_000 and width**2 * n_steps <= 256**2 * 1_000
        for row in run_case(
            f"w={width}, n={n_steps}", field, 1.0, n_steps, x0, weights, methods, fine
        ):
            print(row, flush=True)


def lorenz(horizons):
    print("\n### (b) Lorenz-63, trainable (σ, ρ, β), h = 0.01\n")
    print(HEADER)
    field = Lorenz63(jnp.array(10.0), jnp.array(28.0), jnp.array(8 / 3))
    x0 = jnp.array([1.0, 1.0, 1.0])
    weights = jnp.array([1.0, 1.0, 1.0])
    for t1 in horizons:
        n_steps = round(t1 / 0.01)
        methods = ALL[:2] + ["reversible κ=23"] + ALL[2:]
        for row in run_case(f"T={t1:g}", field, t1, n_steps, x0, weights, methods, fine=True):
            print(row, flush=True)


def lorenz_horizon(horizons):
    print("\n### (c) Lorenz-63: where exact reversal breaks, h = 0.01\n")
    print(
        "| T | reversible (κ=1) grad err | reversible κ=23 grad err | 1/s_min | ε/s_min |\n"
        "|---|---|---|---|---|"
    )
    field = Lorenz63(jnp.array(10.0), jnp.array(28.0), jnp.array(8 / 3))
    x0 = jnp.array([1.0, 1.0, 1.0])
    weights = jnp.array([1.0, 1.0, 1.0])
    for t1 in horizons:
        n_steps = round(t1 / 0.01)
        errors = []
        for method in ["reversible", "reversible κ=23"]:
            grad = jax.jit(make_grad(method, t1, n_steps, x0, weights))(field)
            reference = jax.jit(make_grad(REFERENCE[method], t1, n_steps, x0, weights))(field)
            errors.append(relative_error(grad, reference))
        net = deepest.ContinuousNetwork(field, t1, n_steps, solver=diffrax.Tsit5())
        flow_jacobian = jax.jit(jax.jacrev(net))(x0)
        s_min = float(jnp.linalg.svd(flow_jacobian, compute_uv=False)[-1])
        eps = float(jnp.finfo(jnp.float64).eps)
        print(
            f"| {t1:g} | {errors[0]:.1e} | {errors[1]:.1e} | {1 / s_min:.1e} | {eps / s_min:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
