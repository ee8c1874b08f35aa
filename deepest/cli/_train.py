"""`deepest train CONFIG.yaml`: the network experiments of "deepest learning", trained by
annealing and by backpropagation (Adam with costate gradients) on the same pairs.

Experiments (`experiment:` in the config):

- `twin_network`: pairs from a generator network (`deepest.twin_generator`), learned by a
  deeper-than-wide network.
- `bar_images`: 5×5 bar images in 4 classes (`deepest.bar_images`).
- `depth_resolution`: one smooth flow map (`deepest.FlowMap`) learned by residual networks
  x + h·F(x; W), h = T/L, for several depths L, with R_f^disc = R_f^cont·D·T/(2h²) so that
  every depth approximates the same continuous action.
"""

import copy
import json
import time
from collections.abc import Sequence

import numpy as np

from ._anneal import ANNEAL_DEFAULTS, _minimiser, anneal_from_config
from ._config import check_keys, default_out, load_config, merge, set_dotted
from ._folder import ResultsFolder

# The anneal section of `deepest anneal`, with a schedule suited to networks, less the
# Levenberg–Marquardt setting (a network's action has no banded residuals: L-BFGS only).
_ANNEAL = {
    **{k: v for k, v in ANNEAL_DEFAULTS["anneal"].items() if k != "damping"},
    "rf0": 1e-4,
    "n_beta": 30,
}
_BACKPROP = {
    "learning_rate": 1e-2,
    "steps": 2000,
    "batch_size": None,
    "n_runs": 4,
    "seed": 2,
}
_NETWORK = {
    "widths": [10, 10],
    "activation": "tanh",
    "output_activation": "tanh",
    "use_bias": False,
    "init": "normal",
    "seed": 3,
}
_PROBLEM = {"rm": None, "state_noise": 0.1}

TRAIN_DEFAULTS = {
    "twin_network": {
        "experiment": "twin_network",
        "data": {
            "variant": "tanh",
            "width": 10,
            "generator_layers": 100,
            "gain": 1.2,
            "noise": 0.005,
            "n_train": 10,
            "n_validation": 200,
            "n_test": 1000,
            "seed": 0,
        },
        "network": dict(_NETWORK, widths=[10] * 20),
        "problem": dict(_PROBLEM),
        "anneal": dict(_ANNEAL),
        "backprop": dict(_BACKPROP),
        "output": {"save_betas": []},
    },
    "bar_images": {
        "experiment": "bar_images",
        "data": {
            "size": 5,
            "positions": "centered",
            "pixel_noise": 0.35,
            "n_train": 40,
            "n_validation": 200,
            "n_test": 1000,
            "seed": 0,
        },
        "network": dict(
            _NETWORK,
            widths=[25, 30, 4],
            activation="sigmoid",
            output_activation="sigmoid",
            use_bias=True,
        ),
        "problem": dict(_PROBLEM, rm=1.0),
        "anneal": dict(_ANNEAL),
        "backprop": dict(_BACKPROP),
        "output": {"save_betas": []},
    },
    "depth_resolution": {
        "experiment": "depth_resolution",
        "data": {
            "dim": 2,
            "horizon": 1.0,
            "scale": 2.0,
            "noise": 0.01,
            "input_range": [-1.0, 1.0],
            "n_train": 20,
            "n_validation": 200,
            "n_test": 1000,
            "seed": 0,
        },
        "network": {
            "depths": [5, 10, 20, 40],
            "activation": "tanh",
            "use_bias": True,
            "init": "normal",
            "seed": 3,
        },
        "problem": {"rm": None, "rf0_continuous": 1e-4, "state_noise": 0.01},
        "anneal": {k: v for k, v in _ANNEAL.items() if k != "rf0"},
        "backprop": dict(_BACKPROP),
        "output": {"save_betas": []},
    },
}

ACTIVATIONS = ("tanh", "sigmoid", "identity", "relu")


def _activation(name: str):
    import jax
    import jax.numpy as jnp

    table = {
        "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid,
        "identity": lambda z: z,
        "relu": jax.nn.relu,
    }
    if name not in table:
        raise ValueError(f"Unknown activation {name!r}; use one of {ACTIVATIONS}.")
    return table[name]


def resolve_train_config(config: dict, sets: Sequence[str] = ()) -> dict:
    """Check a train config (unknown keys with the nearest valid key, values), fill in
    every default of its `experiment`, then apply the `--set key=value` overrides."""
    config = dict(config or {})
    experiment = config.get("experiment")
    if experiment is None:
        raise ValueError(f"Set `experiment` to one of {tuple(TRAIN_DEFAULTS)}.")
    check_keys({experiment: None}, TRAIN_DEFAULTS, "experiment")
    config = merge(TRAIN_DEFAULTS[experiment], config, "config")
    for assignment in sets:
        set_dotted(config, assignment)
    if config["experiment"] != experiment:
        raise ValueError("`experiment` cannot be changed by --set; edit the config file.")
    net = config["network"]
    for key in ("activation", "output_activation"):
        if key in net:
            _activation(net[key])
    if experiment != "depth_resolution":
        widths = net["widths"]
        if not (isinstance(widths, list) and len(widths) >= 2):
            raise ValueError("`network.widths` must list N_0, …, N_L (at least two widths).")
    else:
        depths = net["depths"]
        if not (isinstance(depths, list) and depths and all(int(d) >= 1 for d in depths)):
            raise ValueError("`network.depths` must be a list of positive depths L.")
    if net["init"] not in ("normal", "uniform"):
        raise ValueError(f"`network.init` must be 'normal' or 'uniform'; got {net['init']!r}.")
    data = config["data"]
    for key in ("n_train", "n_validation", "n_test"):
        if int(data[key]) < 1:
            raise ValueError(f"`data.{key}` must be at least 1; got {data[key]}.")
    if config["problem"]["rm"] is None:
        if "noise" not in data:
            raise ValueError("Set `problem.rm`.")
        config["problem"]["rm"] = 1.0 / float(data["noise"]) ** 2
    if config["anneal"]["minimiser"] != "lbfgs":
        # a network's action is not banded in time per unknown: its weights are per layer
        raise ValueError(
            f"`anneal.minimiser` must be 'lbfgs' for network training; "
            f"got {config['anneal']['minimiser']!r}."
        )
    _minimiser(config["anneal"])  # checks its settings before any compute
    return config


# -- data and networks -------------------------------------------------------------------


def build_data(config: dict) -> dict:
    """The train, validation and test pairs of an experiment: {split: (inputs, targets)},
    plus `generator` (the data-generating map, or None)."""
    import jax.random as jr

    from .. import FlowMap, bar_images, noisy_pairs, twin_generator

    d = config["data"]
    sizes = {s: int(d[f"n_{s}"]) for s in ("train", "validation", "test")}
    k_gen, *keys = jr.split(jr.key(int(d["seed"])), 4)
    out = {"generator": None}
    if config["experiment"] == "twin_network":
        gen = twin_generator(
            k_gen,
            d["variant"],
            width=int(d["width"]),
            n_layers=int(d["generator_layers"]),
            gain=float(d["gain"]),
        )
        out["generator"] = gen
        for (split, n), k in zip(sizes.items(), keys, strict=False):
            out[split] = noisy_pairs(gen, n, k, noise=float(d["noise"]))
    elif config["experiment"] == "bar_images":
        for (split, n), k in zip(sizes.items(), keys, strict=False):
            out[split] = bar_images(
                n, k, size=int(d["size"]), noise=float(d["pixel_noise"]), positions=d["positions"]
            )
    else:
        flow = FlowMap(int(d["dim"]), k_gen, horizon=float(d["horizon"]), scale=float(d["scale"]))
        out["generator"] = flow
        lo, hi = (float(v) for v in d["input_range"])
        for (split, n), k in zip(sizes.items(), keys, strict=False):
            k_in, k_pairs = jr.split(k)
            inputs = jr.uniform(k_in, (n, int(d["dim"])), minval=lo, maxval=hi)
            out[split] = noisy_pairs(flow, n, k_pairs, noise=float(d["noise"]), inputs=inputs)
    return out


def network_factory(config: dict, depth: int | None = None):
    """`key -> LayeredNetwork` of the config's architecture (for the residual networks of
    `depth_resolution`, of depth `depth`)."""
    from .. import LayeredNetwork

    net = config["network"]
    if config["experiment"] == "depth_resolution":
        dim = int(config["data"]["dim"])
        h = float(config["data"]["horizon"]) / depth
        act = _activation(net["activation"])
        return lambda key: LayeredNetwork(
            [dim] * (depth + 1),
            act,
            key=key,
            use_bias=bool(net["use_bias"]),
            init=net["init"],
            residual_step=h,
        )
    widths = [int(w) for w in net["widths"]]
    acts = [_activation(net["activation"])] * (len(widths) - 2) + [
        _activation(net["output_activation"])
    ]
    return lambda key: LayeredNetwork(
        widths, acts, key=key, use_bias=bool(net["use_bias"]), init=net["init"]
    )


def rf_scale(config: dict, depth: int) -> float:
    """R_f^disc / R_f^cont = D·T/(2h²) for the residual network of depth L (h = T/L)."""
    d = config["data"]
    horizon = float(d["horizon"])
    h = horizon / depth
    return int(d["dim"]) * horizon / (2 * h**2)


# -- the two trainings -------------------------------------------------------------------


def errors_of(net, data: dict, classification: bool) -> dict:
    """MSE (and accuracy) of the plain forward pass on the train, validation and test sets."""
    import jax
    import jax.numpy as jnp

    out = {}
    for split in ("train", "validation", "test"):
        x, y = data[split]
        pred = jax.vmap(net)(x)
        out[f"{split}_error"] = float(jnp.mean((pred - y) ** 2))
        if classification:
            hit = jnp.argmax(pred, axis=-1) == jnp.argmax(y, axis=-1)
            out[f"{split}_accuracy"] = float(jnp.mean(hit.astype(pred.dtype)))
    return out


def run_annealing(config: dict, data: dict, *, depth: int | None = None, progress: bool = False):
    """Anneal the config's `Training` problem. **Returns:** `(result, problem, summary)`,
    the summary a dict of the lowest-action path's and the best-validation path's errors."""
    import jax.random as jr

    from .. import AnnealSchedule, Training

    p, a = config["problem"], config["anneal"]
    factory = network_factory(config, depth)
    net = factory(jr.key(int(config["network"]["seed"])))
    noise = config["data"].get("noise")
    problem = Training(
        net,
        *data["train"],
        rm=np.asarray(p["rm"], dtype=float),
        validation=data["validation"],
        noise=None if noise is None else float(noise),
        weight_init=factory,
        state_noise=float(p["state_noise"]),
    )
    rf0 = float(a["rf0"]) if depth is None else float(p["rf0_continuous"]) * rf_scale(config, depth)
    schedule = AnnealSchedule(rf0, float(a["alpha"]), int(a["n_beta"]))
    start = time.perf_counter()
    result = anneal_from_config(problem, schedule, config, progress)
    wall = time.perf_counter() - start
    best = result.best
    by_validation = int(np.nanargmin(np.asarray(result.validation_error)))
    summary = {
        "wall_time": wall,
        "run_time": result.stats["run_time"],
        "compile_time": result.stats["compile_time"],
        "rf0": rf0,
        "lowest_action_path": best,
        "final_action": float(result.action[-1, best]),
        "measurement_error": float(result.measurement_error[-1, best]),
        "model_error": float(result.model_error[-1, best]),
        "lowest_action": errors_of(result.model(best), data, problem.classification),
        "best_validation_path": by_validation,
        "best_validation": errors_of(result.model(by_validation), data, problem.classification),
    }
    return result, problem, summary


def run_backprop(config: dict, data: dict, *, depth: int | None = None, progress: bool = False):
    """Adam with costate gradients ([`deepest.fit`][]) on the MSE of the training pairs,
    `backprop.n_runs` runs from the network's initialisation. **Returns:** a dict of the
    lowest-training-loss run's and the best-validation run's errors."""
    import jax.numpy as jnp
    import jax.random as jr
    import optax

    from .. import fit

    b = config["backprop"]
    factory = network_factory(config, depth)
    classification = config["experiment"] == "bar_images"

    def mse(y_hat, y):
        return jnp.mean((y_hat - y) ** 2)

    runs = []
    start = time.perf_counter()
    for key in jr.split(jr.key(int(b["seed"])), int(b["n_runs"])):
        k_init, k_fit = jr.split(key)
        net, history = fit(
            factory(k_init),
            mse,
            data["train"],
            optax.adam(float(b["learning_rate"])),
            int(b["steps"]),
            k_fit,
            batch_size=None if b["batch_size"] is None else int(b["batch_size"]),
            progress=progress,
        )
        runs.append(errors_of(net, data, classification))
    wall = time.perf_counter() - start
    lowest = int(np.argmin([r["train_error"] for r in runs]))
    by_validation = int(np.argmin([r["validation_error"] for r in runs]))
    return {
        "wall_time": wall,
        "lowest_train_run": lowest,
        "lowest_train": runs[lowest],
        "best_validation_run": by_validation,
        "best_validation": runs[by_validation],
    }


def mean_baseline(data: dict) -> dict:
    """Test MSE of predicting the mean training target for every input (the level any
    useful network must beat)."""
    mean = np.asarray(data["train"][1]).mean(axis=0)
    return {"test_error": float(np.mean((np.asarray(data["test"][1]) - mean) ** 2))}


def _errors_line(e: dict) -> str:
    line = (
        f"train MSE {e['train_error']:.4g}   validation MSE {e['validation_error']:.4g}   "
        f"test MSE {e['test_error']:.4g}"
    )
    if "test_accuracy" in e:
        line += (
            f"   accuracy train {e['train_accuracy']:.3f}  validation "
            f"{e['validation_accuracy']:.3f}  test {e['test_accuracy']:.3f}"
        )
    return line


def summary_text(
    config: dict,
    annealing: dict,
    backprop: dict,
    depth: int | None = None,
    baseline: dict | None = None,
) -> str:
    """The summary of one trained architecture: annealing and backprop side by side."""
    a, b, d = config["anneal"], config["backprop"], config["data"]
    head = f"experiment: {config['experiment']}" + (f"   depth L = {depth}" if depth else "")
    lines = [
        head,
        f"pairs: train {d['n_train']}   validation {d['n_validation']}   test "
        f"{d['n_test']}"
        + (
            f"   noise σ = {d['noise']} (MSE floor σ² = {float(d['noise']) ** 2:.3g})"
            if "noise" in d
            else ""
        ),
    ]
    lines += [
        f"annealing: {a['n_paths']} paths, {a['n_beta']} β, rf0 {annealing['rf0']:.4g}, α "
        f"{a['alpha']}: wall {annealing['wall_time']:.2f} s (run {annealing['run_time']:.2f} s,"
        f" compile {annealing['compile_time']:.2f} s)",
        f"  lowest-action path {annealing['lowest_action_path']}: action "
        f"{annealing['final_action']:.4g}, measurement error {annealing['measurement_error']:.4g}"
        f", model error {annealing['model_error']:.3g}",
        "    " + _errors_line(annealing["lowest_action"]),
        f"  best-validation path {annealing['best_validation_path']}:",
        "    " + _errors_line(annealing["best_validation"]),
        f"backprop: Adam (lr {b['learning_rate']}, {b['steps']} steps, batch "
        f"{b['batch_size'] or 'full'}), costate gradients, {b['n_runs']} runs: wall "
        f"{backprop['wall_time']:.2f} s (compile included)",
        f"  lowest-train-loss run {backprop['lowest_train_run']}:",
        "    " + _errors_line(backprop["lowest_train"]),
        f"  best-validation run {backprop['best_validation_run']}:",
        "    " + _errors_line(backprop["best_validation"]),
    ]
    if baseline is not None:
        lines.append(
            f"baseline (predict the mean training target): test MSE {baseline['test_error']:.4g}"
        )
    return "\n".join(lines) + "\n"


def run_train(config_path: str, sets, out, overwrite, progress) -> str:
    """`deepest train`: returns the results folder."""
    import yaml

    config = resolve_train_config(load_config(config_path, []), sets)
    import jax

    if config["anneal"]["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import plot_action_levels

    folder = ResultsFolder(default_out(config_path) if out is None else out, overwrite)
    try:
        data = build_data(config)
        with open(folder.file("config.yaml"), "w") as f:
            yaml.safe_dump(copy.deepcopy(config), f, sort_keys=False)
        depths = (
            [int(L) for L in config["network"]["depths"]]
            if config["experiment"] == "depth_resolution"
            else [None]
        )
        fig, axes = plt.subplots(1, len(depths), figsize=(5 * len(depths), 4), squeeze=False)
        texts, record = [], {}
        for depth, ax in zip(depths, axes[0], strict=False):
            result, _, annealing = run_annealing(config, data, depth=depth, progress=progress)
            backprop = run_backprop(config, data, depth=depth, progress=progress)
            where = folder.path if depth is None else folder.file(f"L{depth:03d}")
            result.save(where)
            plot_action_levels(result, ax=ax)
            if depth is not None:
                ax.set_title(f"L = {depth}, {result.n_paths} paths")
            texts.append(summary_text(config, annealing, backprop, depth, mean_baseline(data)))
            record[str(depth) if depth else "network"] = {"anneal": annealing, "backprop": backprop}
        fig.savefig(folder.file("action_levels.png"), dpi=120, bbox_inches="tight")
        plt.close(fig)
        summary = "\n".join(texts)
        if len(depths) > 1:
            summary += (
                "\ntest MSE against depth (annealing, lowest action | backprop, lowest loss):\n"
            )
            for depth in depths:
                r = record[str(depth)]
                summary += (
                    f"  L = {depth:3d}: {r['anneal']['lowest_action']['test_error']:.4g} | "
                    f"{r['backprop']['lowest_train']['test_error']:.4g}   final action "
                    f"{r['anneal']['final_action']:.4g}\n"
                )
        with open(folder.file("summary.txt"), "w") as f:
            f.write(summary)
        with open(folder.file("errors.json"), "w") as f:
            json.dump(record, f, indent=1)
        folder.publish()
    except BaseException:
        folder.discard()  # nothing half-written is left, nor anything blocking a rerun
        raise
    print(summary, end="")
    return folder.out
