"""Annealing at this tree against another git revision, interleaved, in one run.

Times `deepest.anneal` of the L = 12 config (64 paths, one core, float64; run time without
compilation) at the working tree and at `--baseline REV` (checked out into a temporary git
worktree), alternating between the two, and prints the evaluations per path and the sum of
the final actions beside the times: a restructure that should change nothing must leave the
last two equal to every digit and the times within noise. Each tree builds the problem
with its own `tests/helpers.config_problem`.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_revision.py --baseline b4d03de
"""

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a child process whose first sys.path entry is the tree under test.
CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import os
os.chdir(sys.argv[1])
import jax
jax.config.update("jax_enable_x64", True)
import jax.random as jr
import numpy as np
import deepest
from tests.helpers import config_problem
assert os.path.dirname(deepest.__file__).startswith(sys.argv[1]), deepest.__file__
n_paths, repeats = int(sys.argv[2]), int(sys.argv[3])
problem, schedule, *_ = config_problem("lorenz96_L12.yaml")
times = []
for _ in range(repeats):
    result = deepest.anneal(
        problem, schedule, n_paths, jr.key(0), progress=False, devices=[jax.devices()[0]]
    )
    times.append(result.stats["run_time"])
evaluations = np.asarray(result.iterations).sum(axis=0).mean()
print(f"{min(times):.3f} {evaluations:.1f} {np.asarray(result.action)[-1].sum():.12g}")
"""


def run(tree, n_paths, repeats):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, tree, str(n_paths), str(repeats)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    ).stdout
    return out.split()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    parser.add_argument("--paths", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8 paths, one round")
    args = parser.parse_args()
    if args.quick:
        args.paths, args.rounds, args.repeats = 8, 1, 1
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "baseline")
        subprocess.run(
            ["git", "-C", ROOT, "worktree", "add", "-q", "--detach", base, args.baseline],
            check=True,
        )
        try:
            rows = {args.baseline: [], "this tree": []}
            for _ in range(args.rounds):
                rows[args.baseline].append(run(base, args.paths, args.repeats))
                rows["this tree"].append(run(ROOT, args.paths, args.repeats))
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base], check=True)
    print(
        f"| tree | run time per round, best of {args.repeats} (s) | evaluations per path "
        "| Σ final actions over paths |"
    )
    print("|---|---|---|---|")
    for name, got in rows.items():
        times = ", ".join(g[0] for g in got)
        print(f"| {name} | {times} | {got[-1][1]} | {got[-1][2]} |")


if __name__ == "__main__":
    main()
