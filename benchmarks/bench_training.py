"""Annealing against backpropagation on the same training pairs.

Experiment a (twin network, tanh generator) and b (bar images), each from its config in
`configs/`: variational annealing of `deepest.training` (all paths in one compiled loop)
against Adam with costate gradients (`deepest.fit`), several runs from the network's
initialisation. Reports the errors reached (train, validation and held-out test MSE of the
plain forward pass; accuracy for the bar images) and the wall time, compile excluded and
reported separately.

    .venv/bin/python benchmarks/bench_training.py            # the configs as shipped
    .venv/bin/python benchmarks/bench_training.py --quick    # a quick check of the script
"""

import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)

from deepest.experiments import (  # noqa: E402
    load,
    mean_baseline,
    train_by_annealing,
    train_by_backprop,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = {"a: twin (tanh)": "twin_network.yaml", "b: bar images": "bar_images.yaml"}
QUICK = [
    "anneal.n_paths=2",
    "anneal.n_beta=4",
    "anneal.max_evaluations=200",
    "backprop.steps=20",
    "backprop.n_runs=1",
    "data.n_test=50",
    "data.n_validation=20",
]


def backprop_compile_time(config, data):
    """Seconds of one `fit` call with a single step: its compile (each call compiles)."""
    one = config.model_copy(
        update={"backprop": config.backprop.model_copy(update={"steps": 1, "n_runs": 1})}
    )
    start = time.perf_counter()
    train_by_backprop(one, data)
    return time.perf_counter() - start


def fmt(e, key):
    return f"{e[key]:.3g}" if key in e else "–"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an entry of both configs",
    )
    args = parser.parse_args()
    sets = (QUICK if args.quick else []) + args.set
    rows = []
    for name, file in EXPERIMENTS.items():
        config = load(os.path.join(ROOT, "configs", file), sets)
        data = config.build_data()
        _, _, ann = train_by_annealing(config, data)
        c = backprop_compile_time(config, data)
        bp = train_by_backprop(config, data)
        n_runs = int(config["backprop"]["n_runs"])
        a, b = config["anneal"], config["backprop"]
        ann_label = f"annealing, {a['n_paths']} paths × {a['n_beta']} β"
        bp_label = f"Adam + costate, {n_runs} runs × {b['steps']} steps"
        rows += [
            (
                name,
                ann_label,
                "lowest action",
                ann["lowest_action"],
                ann["run_time"],
                ann["compile_time"],
            ),
            (
                name,
                ann_label,
                "best validation",
                ann["best_validation"],
                ann["run_time"],
                ann["compile_time"],
            ),
            (
                name,
                bp_label,
                "lowest train loss",
                bp["lowest_train"],
                bp["wall_time"] - n_runs * c,
                n_runs * c,
            ),
            (
                name,
                bp_label,
                "best validation",
                bp["best_validation"],
                bp["wall_time"] - n_runs * c,
                n_runs * c,
            ),
            (name, "predict the mean training target", "–", mean_baseline(data), 0.0, 0.0),
        ]
    print(
        "| experiment | method | network chosen by | train MSE | validation MSE | test MSE "
        "| test accuracy | time (s) | compile (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, method, rule, e, run, comp in rows:
        print(
            f"| {name} | {method} | {rule} | {fmt(e, 'train_error')} | "
            f"{fmt(e, 'validation_error')} | {fmt(e, 'test_error')} | "
            f"{fmt(e, 'test_accuracy')} | {run:.1f} | {comp:.1f} |"
        )


if __name__ == "__main__":
    main()
