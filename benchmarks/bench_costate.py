"""The explicit costate sweep against JAX's reverse mode on deep, wide, batched networks.

For each (depth, width, batch) a tanh network of `depth` equal layers (one `lax.scan`) and a
mean-squared output loss: `deepest.costate_grad` against the reference
`jax.grad(lambda n: mse(jax.vmap(n)(x), y))`, both jitted. Inside `jit` the default
`costate_grad` does not check that the data are finite (it checks concrete data on the host);
the column "no check" times `costate_grad(mse, check_finite=False)`, the same program. Times exclude
compilation (reported separately) and are medians over repeats after a warm-up call, with
`block_until_ready`; memory is XLA's `memory_analysis()` of the compiled function
(temporaries + outputs).

    python benchmarks/bench_costate.py            # the recorded grid (a few minutes)
    python benchmarks/bench_costate.py --quick    # a smoke run
"""

import argparse
import re
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402

import deepest  # noqa: E402

# (depth, width, batch): corners and middle of depth 16..1024, width 10..512, batch 1..1024,
# without the products too slow for a 2-core CPU (e.g. 1024 layers of 512² weights = 2 GB).
GRID = [
    (16, 10, 1),
    (16, 10, 1024),
    (16, 64, 32),
    (16, 512, 1),
    (16, 512, 256),
    (64, 64, 32),
    (64, 128, 1024),
    (256, 32, 32),
    (256, 256, 1),
    (1024, 10, 1),
    (1024, 10, 1024),
    (1024, 64, 32),
    (1024, 128, 64),
]
QUICK = [(16, 10, 1), (64, 64, 32), (256, 32, 32)]


def mse(y_hat, y):
    return jnp.mean((y_hat - y) ** 2)


def reference_grad(net, x, y):
    return jax.grad(lambda n: mse(jax.vmap(n)(x), y))(net)


def compile_(fn, args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    jax.block_until_ready(compiled(*args))  # warm-up
    return compiled, compile_s, memory.temp_size_in_bytes + memory.output_size_in_bytes


def op_counts(compiled):
    """Matrix products and fused kernels in the optimised XLA program: `dots/fusions`."""
    text = compiled.as_text()
    return f"{len(re.findall(r' dot[(]', text))}/{len(re.findall(r' fusion[(]', text))}"


def interleaved_times(compiled, args, repeats):
    """Per-function run times, the functions taking turns so that load affects all alike."""
    times = [[] for _ in compiled]
    for _ in range(repeats):
        for fn, record in zip(compiled, times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            record.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke grid")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    functions = (
        reference_grad,
        deepest.costate_grad(mse),
        deepest.costate_grad(mse, check_finite=False),
    )
    print(
        "| depth | width | batch | jax.grad (ms) | costate_grad (ms) | ratio | no check (ms) "
        "| ratio | ratio of minima | jax.grad mem (MB) | costate mem (MB) | mem ratio "
        "| XLA dots/fusions jax.grad; no check | compile jax.grad / costate (s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for depth, width, batch in QUICK if args.quick else GRID:
        key_net, key_x, key_y = jr.split(jr.key(depth * 7919 + width * 31 + batch), 3)
        net = deepest.LayeredNetwork([width] * (depth + 1), jnp.tanh, key=key_net)
        x = jr.normal(key_x, (batch, width))
        y = jr.normal(key_y, (batch, width))
        data = (net, x, y)
        (ref, c_ref, m_ref), (sweep, c_sweep, m_sweep), (bare, _, _) = (
            compile_(fn, data) for fn in functions
        )
        t_ref, t_sweep, t_bare = interleaved_times((ref, sweep, bare), data, args.repeats)
        med = [statistics.median(t) for t in (t_ref, t_sweep, t_bare)]
        print(
            f"| {depth} | {width} | {batch} | {1e3 * med[0]:.3f} | {1e3 * med[1]:.3f} "
            f"| {med[1] / med[0]:.2f} | {1e3 * med[2]:.3f} | {med[2] / med[0]:.2f} "
            f"| {min(t_bare) / min(t_ref):.2f} | {m_ref / 1e6:.2f} | {m_sweep / 1e6:.2f} "
            f"| {m_sweep / m_ref:.2f} | {op_counts(ref)}; {op_counts(bare)} "
            f"| {c_ref:.2f} / {c_sweep:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
