"""The solution of [`deepest.anneal`][]: stop reasons, the result, and its files."""

import enum
import json
import os

import equinox as eqx
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from ._problem import AbstractProblem


class StopReason(enum.IntEnum):
    """Why the minimisation of a (β, path) stopped: `AnnealResult.stop_reason`'s codes.

    - `not_reached`: the path never reached this β (it turned non-finite earlier, or the
      run was interrupted first: `AnnealResult.partial`).
    - `converged_decrease`: the last accepted step and the decrease the minimiser's local
      model still predicts were both at most `ftol` relative to the action; or the line
      search failed along a direction on which the model expected at most that (the
      decrease left is below the action's rounding, as in float32).
    - `converged_gradient`: the largest gradient entry fell to `gtol` times its value at
      the β's first point.
    - `max_steps`: `max_steps` evaluations without meeting either rule.
    - `stalled`: the line search (L-BFGS) or trust region (Levenberg–Marquardt) could make
      no further progress.
    - `non_finite`: the action or its gradient at the β's first point was not finite; the
      path stops here (its later levels are NaN).
    """

    not_reached = 0
    converged_decrease = 1
    converged_gradient = 2
    max_steps = 3
    stalled = 4
    non_finite = 5


_CONVERGED = (StopReason.converged_decrease, StopReason.converged_gradient)


class AnnealResult(eqx.Module):
    """The outcome of [`deepest.anneal`][].

    Arrays indexed `[beta, path]`: `action`, `measurement_error`, `model_error`,
    `stop_reason` (a [`deepest.StopReason`][] code), `converged` (stopped by the `ftol` or
    `gtol` rule), `iterations` (solver steps, one evaluation each, spent at that β).

    - `rf`: the model weights of the schedule, (n_beta,) or (n_beta, dim).
    - `finite`: (n_paths,) False for a path that turned non-finite (its later levels NaN).
    - `unknowns`: the final minimisers, a pytree with a leading n_paths axis.
    - `saved`: {β: unknowns at that β} for the β's listed in `save_betas`.
    - `views`: the problem's named views of `unknowns`; those of the library's problems
      are also properties: `paths` and `params` ([`deepest.Assimilation`][]),
      `train_error`, `validation_error`, `train_accuracy`, `validation_accuracy`
      (`deepest.Training`).
    - `stats`: run statistics: `run_time`, `compile_time` (seconds), `loop_steps` (loop
      iterations), `lane_steps` (useful steps summed over paths), `n_devices`.
    - `best`: the path with the lowest final action.
    - `partial`: True for a run that was interrupted: only the β's each path finished
      are recorded (the others NaN, `not_reached`), and `unknowns` are each path's
      minimum at the last β it finished.
    """

    rf: np.ndarray
    action: np.ndarray
    measurement_error: np.ndarray
    model_error: np.ndarray
    stop_reason: np.ndarray
    iterations: np.ndarray
    unknowns: PyTree[np.ndarray]
    saved: dict[int, PyTree[np.ndarray]]
    views: dict
    stats: dict
    expected_action: float | None = None
    problem: AbstractProblem | None = None
    partial: bool = False

    def _view(self, name: str):
        try:
            return self.views[name]
        except KeyError:
            raise AttributeError(
                f"This result's problem has no {name!r} view; it has {sorted(self.views)}."
            ) from None

    @property
    def paths(self) -> np.ndarray:
        """(n_paths, N_model, D): the estimated paths (an assimilation's view)."""
        return self._view("paths")

    @property
    def params(self) -> dict[str, np.ndarray]:
        """{name: (n_paths, …)}: the estimated parameters (an assimilation's view)."""
        return self._view("params")

    @property
    def train_error(self) -> np.ndarray:
        """(n_paths,): each path's network's error on the training data (a training's view)."""
        return self._view("train_error")

    @property
    def validation_error(self) -> np.ndarray:
        """(n_paths,): the error on the validation data (a training's view)."""
        return self._view("validation_error")

    @property
    def train_accuracy(self) -> np.ndarray:
        """(n_paths,): the training accuracy of a classification (a training's view)."""
        return self._view("train_accuracy")

    @property
    def validation_accuracy(self) -> np.ndarray:
        """(n_paths,): the validation accuracy of a classification (a training's view)."""
        return self._view("validation_accuracy")

    @property
    def n_paths(self) -> int:
        return self.action.shape[1]

    @property
    def converged(self) -> np.ndarray:
        """(n_beta, n_paths): the minimisation met the `ftol` or `gtol` rule."""
        return np.isin(self.stop_reason, [int(r) for r in _CONVERGED])

    @property
    def finite(self) -> np.ndarray:
        """(n_paths,): False for a path that turned non-finite (its later levels NaN)."""
        return ~np.any(self.stop_reason == StopReason.non_finite, axis=0)

    def stop_reasons(self) -> dict[str, int]:
        """How many (β, path) minimisations stopped for each [`deepest.StopReason`][]."""
        return {r.name: int(np.sum(self.stop_reason == r)) for r in StopReason}

    @property
    def best(self) -> int:
        """Index of the path with the lowest final action (non-finite ones excluded); of a
        `partial` result, the lowest action at the highest β any path finished."""
        last = self.action[self.last_beta]
        return int(np.argmin(np.where(np.isfinite(last), last, np.inf)))

    @property
    def last_beta(self) -> int:
        """The highest β index at which some path finished (the last one, unless the run
        was interrupted: `partial`)."""
        finished = np.nonzero(np.any(np.isfinite(self.action), axis=1))[0]
        return int(finished[-1]) if finished.size else self.action.shape[0] - 1

    def path_unknowns(self, i: int | None = None) -> PyTree[np.ndarray]:
        """The final unknowns of path `i` (default: `best`)."""
        i = self.best if i is None else i
        return jtu.tree_map(lambda a: a[i], self.unknowns)

    def predict(self, t_end: float, path: int | None = None, n_times: int = 200):
        """Integrate a path's final state and parameters past the window, to `t_end`.

        **Returns:** `(times, states)` from the window's end to `t_end`.
        """
        if self.problem is None:
            raise ValueError("predict needs the problem (pass it to load_result) with a forecast.")
        return self.problem.forecast(self.path_unknowns(path), t_end, n_times)

    def model(self, i: int | None = None):
        """The model (e.g. trained network) of path `i` (default: `best`)."""
        if self.problem is None:
            raise ValueError("This result's problem does not define a model of its unknowns.")
        return self.problem.to_model(self.path_unknowns(i))

    def summary(self) -> dict:
        """Per-β iteration statistics and the final levels, as plain numbers."""
        it = np.where(self.finite[None], self.iterations, 0)
        return {
            "n_paths": self.n_paths,
            "best": self.best,
            "final_action_best": float(self.action[self.last_beta, self.best]),
            "measurement_error_best": float(self.measurement_error[self.last_beta, self.best]),
            "mean_iterations_per_beta": it.mean(axis=1).tolist(),
            "max_iterations_per_beta": it.max(axis=1).tolist(),
            "converged_fraction": float(self.converged[:, self.finite].mean())
            if self.finite.any()
            else 0.0,
            "stop_reasons": self.stop_reasons(),
            "partial": self.partial,
            **{k: v for k, v in self.stats.items()},
        }

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> str:
        """Write the result to `directory/result.npz`: see [`deepest.save_result`][]."""
        return save_result(self, directory, overwrite=overwrite)


_ARRAYS = ("rf", "action", "measurement_error", "model_error", "stop_reason", "iterations")


def save_result(result: AnnealResult, directory: str | os.PathLike, overwrite: bool = False) -> str:
    """Write an [`deepest.AnnealResult`][] to `directory/result.npz` (the problem itself is
    not saved; [`deepest.load_result`][] reads it back).

    Refuses to replace an existing result unless `overwrite=True`; the file is written
    to a temporary name first and then moved into place.

    **Returns:** the path of the file.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "result.npz")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    arrays = {name: getattr(result, name) for name in _ARRAYS}
    arrays.update(_flatten("unknowns", result.unknowns))
    arrays.update(_flatten("views", result.views))
    for beta, u in result.saved.items():
        arrays.update(_flatten(f"saved/{beta}", u))
    meta = {
        "stats": result.stats,
        "expected_action": result.expected_action,
        "partial": result.partial,
    }
    arrays["meta"] = np.asarray(json.dumps(meta))
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)
    return path


def _flatten(prefix: str, tree) -> dict[str, np.ndarray]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(f"{prefix}/{k}", v))
        return out
    return {prefix: np.asarray(tree)}


def _unflatten(arrays: dict[str, np.ndarray], prefix: str):
    tree: dict = {}
    for key, value in arrays.items():
        if not key.startswith(prefix + "/"):
            continue
        parts = key[len(prefix) + 1 :].split("/")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def _old_codes(arrays):
    """Stop reasons for a result saved before they were recorded: converged levels count as
    `converged_decrease`, the others as `max_steps`, a non-finite path's from its first
    NaN level on as `non_finite` then `not_reached`."""
    codes = np.where(arrays["converged"], StopReason.converged_decrease, StopReason.max_steps)
    nan = np.isnan(arrays["action"])
    first_nan = nan & (np.cumsum(nan, axis=0) == 1)
    codes = np.where(nan, StopReason.not_reached, codes)
    return np.where(first_nan, StopReason.non_finite, codes).astype(np.int32)


def load_result(
    directory: str | os.PathLike, problem: AbstractProblem | None = None
) -> AnnealResult:
    """Read an [`deepest.AnnealResult`][] written by [`deepest.save_result`][] (or
    `AnnealResult.save`), including those of earlier versions.

    Pass the `problem` to use `predict` and `model` on the loaded result.
    """
    path = os.path.join(os.fspath(directory), "result.npz")
    with np.load(path) as f:
        arrays = dict(f)
    meta = json.loads(str(arrays.pop("meta")))
    saved = _unflatten(arrays, "saved")
    return AnnealResult(
        rf=arrays["rf"],
        action=arrays["action"],
        measurement_error=arrays["measurement_error"],
        model_error=arrays["model_error"],
        stop_reason=arrays["stop_reason"] if "stop_reason" in arrays else _old_codes(arrays),
        iterations=arrays["iterations"],
        unknowns=_unflatten(arrays, "unknowns"),
        saved={int(k): v for k, v in saved.items()},
        views=_unflatten(arrays, "views"),
        stats=meta["stats"],
        expected_action=meta["expected_action"],
        problem=problem,
        partial=bool(meta.get("partial", False)),
    )
