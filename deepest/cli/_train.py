"""`deepest train CONFIG.yaml`: the network experiments of "deepest learning" (see
[`deepest.experiments.TrainConfig`][]), trained by annealing and by backpropagation."""

import functools
import json
import os

from ..annealing import CHECKPOINT
from ..experiments import mean_baseline, train_by_annealing, train_by_backprop
from ._folder import resume_folder
from ._session import (
    PREPARING,
    CommandLineMeter,
    Outcome,
    Session,
    finish,
    kept_on_interrupt,
    open_folder,
    read_config,
    start_jax,
    start_plots,
    write_config,
    write_text,
)


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


def run_train(
    config_path: str | None,
    sets,
    out,
    overwrite,
    session: Session,
    resume: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Outcome:
    """`deepest train`. Each architecture (depth) is a step that is kept once done: its
    annealing (result.npz, annealing.json; a checkpoint while it runs) and then its
    backpropagation (record.json); `--resume` goes on from the first step not done."""
    locate = functools.partial(resume_folder, command="train")
    config, source, out = read_config("train", config_path, sets, out, resume, locate)
    start_jax(config.anneal.dtype)
    folder = open_folder(session, out, overwrite, source)

    def work() -> Outcome:
        start_plots()
        import matplotlib.pyplot as plt

        from .. import AnnealResult, plot_action_levels

        if source is None:
            write_config(folder.file("config.yaml"), config)
        with session.phase("data: building the training pairs"):
            data = config.build_data()
        depths = config.depths()
        texts, record, results = [], {}, {}
        for depth in depths:
            where = folder.path if depth is None else folder.file(f"L{depth:03d}")
            os.makedirs(where, exist_ok=True)
            name = "network" if depth is None else f"depth L = {depth}"
            done = os.path.join(where, "annealing.json")
            if os.path.exists(done):
                session.say(f"{name}: annealing done before, read from {where}")
                problem = config.problem_for(data, depth)
                result = AnnealResult.load(where, problem)
                annealing = _read_json(done)
            else:
                resume_here = where if os.path.exists(os.path.join(where, CHECKPOINT)) else None
                with session.phase(f"{name}: {PREPARING}"):
                    result, _, annealing = train_by_annealing(
                        config,
                        data,
                        depth=depth,
                        progress=CommandLineMeter(progress),
                        checkpoint=where,
                        resume=resume_here,
                        check_memory=not force,
                    )
                if annealing is None:  # interrupted: its checkpoint is kept
                    folder.keep()
                    line = f"continue with `deepest train --resume {out}`"
                    return Outcome(folder.path, True, f"PARTIAL RESULT: {line}\n")
                result.save(where, overwrite=True)
                _write_json(done, annealing)
                if os.path.exists(os.path.join(where, CHECKPOINT)):
                    os.remove(os.path.join(where, CHECKPOINT))
            results[depth] = result
            recorded = os.path.join(where, "backprop.json")
            if os.path.exists(recorded):
                backprop = _read_json(recorded)
            else:
                with session.phase(f"{name}: backpropagation ({config.backprop.n_runs} runs)"):
                    backprop = train_by_backprop(config, data, depth=depth, progress=progress)
                _write_json(recorded, backprop)
            texts.append(summary_text(config, annealing, backprop, depth, mean_baseline(data)))
            record[str(depth) if depth else "network"] = {"anneal": annealing, "backprop": backprop}

        def write(where):
            with session.phase("results: plots and summary"):
                fig, axes = plt.subplots(
                    1, len(depths), figsize=(5 * len(depths), 4), squeeze=False
                )
                for depth, ax in zip(depths, axes[0], strict=False):
                    plot_action_levels(results[depth], ax=ax)
                    if depth is not None:
                        ax.set_title(f"L = {depth}, {results[depth].n_paths} paths")
                fig.savefig(os.path.join(where, "action_levels.png"), dpi=120, bbox_inches="tight")
                plt.close(fig)
                summary = "\n".join(texts)
                if len(depths) > 1:
                    summary += (
                        "\ntest MSE against depth (annealing, lowest action | backprop, "
                        "lowest loss):\n"
                    )
                    for depth in depths:
                        r = record[str(depth)]
                        summary += (
                            f"  L = {depth:3d}: {r['anneal']['lowest_action']['test_error']:.4g}"
                            f" | {r['backprop']['lowest_train']['test_error']:.4g}   final "
                            f"action {r['anneal']['final_action']:.4g}\n"
                        )
                write_text(os.path.join(where, "summary.txt"), summary)
                _write_json(os.path.join(where, "errors.json"), record)
            return summary

        def save(where):  # the results are already in the folder, depth by depth
            pass

        return finish(session, folder, write, partial=False, save=save, resume="")

    return session.run(work, lambda: kept_on_interrupt(folder, "train", out), folder)


def _write_json(path: str, value) -> None:
    write_text(path, json.dumps(value, indent=1))


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)
