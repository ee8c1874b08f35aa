"""`deepest train CONFIG.yaml`: the network experiments of "deepest learning" (see
[`deepest.experiments.TrainConfig`][]), trained by annealing and by backpropagation."""

import json

from ..experiments import load, mean_baseline, train_by_annealing, train_by_backprop
from ._folder import ResultsFolder, default_out


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
    config,
    annealing: dict,
    backprop: dict,
    depth: int | None = None,
    baseline: dict | None = None,
) -> str:
    """The summary of one trained architecture: annealing and backprop side by side."""
    a, b, d = config.anneal, config.backprop, config.data
    noise = getattr(d, "noise", None)
    head = f"experiment: {config.experiment}" + (f"   depth L = {depth}" if depth else "")
    lines = [
        head,
        f"pairs: train {d.n_train}   validation {d.n_validation}   test {d.n_test}"
        + (f"   noise σ = {noise} (MSE floor σ² = {noise**2:.3g})" if noise is not None else ""),
    ]
    lines += [
        f"annealing: {a.n_paths} paths, {a.n_beta} β, rf0 {annealing['rf0']:.4g}, α "
        f"{a.alpha}: wall {annealing['wall_time']:.2f} s (run {annealing['run_time']:.2f} s,"
        f" compile {annealing['compile_time']:.2f} s)",
        f"  lowest-action path {annealing['lowest_action_path']}: action "
        f"{annealing['final_action']:.4g}, measurement error {annealing['measurement_error']:.4g}"
        f", model error {annealing['model_error']:.3g}",
        "    " + _errors_line(annealing["lowest_action"]),
        f"  best-validation path {annealing['best_validation_path']}:",
        "    " + _errors_line(annealing["best_validation"]),
        f"backprop: Adam (lr {b.learning_rate}, {b.steps} steps, batch "
        f"{b.batch_size or 'full'}), costate gradients, {b.n_runs} runs: wall "
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

    config = load(config_path, sets, kind="train")
    import jax

    if config.anneal.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import plot_action_levels

    folder = ResultsFolder(default_out(config_path) if out is None else out, overwrite)
    try:
        data = config.build_data()
        with open(folder.file("config.yaml"), "w") as f:
            yaml.safe_dump(config.model_dump(), f, sort_keys=False)
        depths = config.depths()
        fig, axes = plt.subplots(1, len(depths), figsize=(5 * len(depths), 4), squeeze=False)
        texts, record = [], {}
        for depth, ax in zip(depths, axes[0], strict=False):
            result, _, annealing = train_by_annealing(config, data, depth=depth, progress=progress)
            backprop = train_by_backprop(config, data, depth=depth, progress=progress)
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
