"""The solution of [`deepest.anneal`][]: its codes, the result, and its files."""

import enum
import json
import os
import warnings

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from .._io import load_npz, unflatten, write_atomic
from .._misc import renamed_keywords
from .._results import RESULTS, AbstractResult, check_throw, codes_of, name_of, results_of
from ._checkpoint import problem_digest
from ._problem import AbstractProblem


class StopCode(enum.IntEnum):
    """The annealing loop's code of why a (β, path) minimisation stopped: what the loop
    records per lane, turned by the result into a [`deepest.RESULTS`][] code and the
    convergence rule that fired (`from_stop_codes`). Kept importable as the deprecated
    `deepest.StopReason`."""

    not_reached = 0
    converged_decrease = 1
    converged_gradient = 2
    max_steps = 3
    stalled = 4
    non_finite = 5


# StopCode → RESULTS, and → the rule that fired ("" where none did)
_TO_RESULTS = {
    StopCode.not_reached: RESULTS.not_reached,
    StopCode.converged_decrease: RESULTS.successful,
    StopCode.converged_gradient: RESULTS.successful,
    StopCode.max_steps: RESULTS.nonlinear_max_steps_reached,
    StopCode.stalled: RESULTS.stalled,
    StopCode.non_finite: RESULTS.nonfinite,
}
_RULE = {StopCode.converged_decrease: "decrease", StopCode.converged_gradient: "gradient"}


def from_stop_codes(codes) -> dict:
    """The fields `result` and `converged_by` of an [`deepest.AnnealResult`][] from the
    loop's `StopCode`s."""
    codes = np.asarray(codes)
    lookup = np.zeros(len(StopCode), np.int32)
    rules = np.full(len(StopCode), "", dtype="<U8")
    for code, item in _TO_RESULTS.items():
        lookup[code] = codes_of(item)
        rules[code] = _RULE.get(code, "")
    return {"result": results_of(lookup[codes]), "converged_by": rules[codes]}


def _to_stop_codes(result: RESULTS, converged_by: np.ndarray) -> np.ndarray:
    """The inverse of `from_stop_codes`: the deprecated `stop_reason` codes."""
    codes = codes_of(result)
    out = np.zeros(codes.shape, np.int32)
    for code, item in _TO_RESULTS.items():
        hit = codes == codes_of(item)
        if code in _RULE:
            hit &= converged_by == _RULE[code]
        out[hit] = code
    return out


class AnnealResult(AbstractResult):
    """The outcome of [`deepest.anneal`][].

    Arrays indexed `[beta, path]`: `action`, `measurement_error`, `model_error`,
    `result` (why the minimisation stopped: [`deepest.RESULTS`][] codes, `successful`
    when the `ftol` or `gtol` rule fired), `converged_by` (the rule that fired:
    "decrease", "gradient", or "" where neither did), `converged` (`result` is
    `successful`), `iterations` (solver steps, one evaluation each, spent at that β).

    - `rf`: the model weights of the schedule, (n_beta,) or (n_beta, dim).
    - `finite`: (n_paths,) False for a path that turned non-finite (its later levels NaN).
    - `unknowns`: the final minimisers, a pytree with a leading n_paths axis.
    - `saved`: {β: unknowns at that β} for the β's listed in `save_betas`.
    - `views`: the problem's named views of `unknowns`; those of the library's problems
      are also properties: `paths` and `params` ([`deepest.Assimilation`][]),
      `train_error`, `validation_error`, `train_accuracy`, `validation_accuracy`
      (`deepest.training`).
    - `stats`: run statistics: `run_time`, `compile_time` (seconds), `loop_steps` (loop
      iterations), `lane_steps` (useful steps summed over paths), `n_devices`.
    - `best`: the path with the lowest final action.
    - `partial`: True for a run that was interrupted: only the β's each path finished
      are recorded (the others NaN, `not_reached`), and `unknowns` are each path's
      minimum at the last β it finished.

    `warnings()` lists, as lines of text, what needs a look: paths that turned non-finite,
    a bounded parameter of the best path that ends at its bound.

    `save(path)` writes it (`path/result.npz`), `AnnealResult.load(path, problem)` reads
    it back (also the files of earlier versions).
    """

    rf: np.ndarray
    action: np.ndarray
    measurement_error: np.ndarray
    model_error: np.ndarray
    result: RESULTS
    converged_by: np.ndarray
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
        return codes_of(self.result) == codes_of(RESULTS.successful)

    @property
    def finite(self) -> np.ndarray:
        """(n_paths,): False for a path that turned non-finite (its later levels NaN)."""
        return ~np.any(codes_of(self.result) == codes_of(RESULTS.nonfinite), axis=0)

    @property
    def path_result(self) -> RESULTS:
        """(n_paths,): each path's code: `nonfinite` for a path that turned non-finite,
        else its code at the last β."""
        last = codes_of(self.result)[-1]
        return results_of(np.where(self.finite, last, codes_of(RESULTS.nonfinite)))

    @property
    def stop_reason(self) -> np.ndarray:
        """Deprecated: the codes of the former `deepest.StopReason`; use `result` and
        `converged_by`."""
        warnings.warn(
            "AnnealResult.stop_reason is deprecated: use `result` (deepest.RESULTS codes) "
            "and `converged_by`.",
            DeprecationWarning,
            stacklevel=2,
        )
        return _to_stop_codes(self.result, self.converged_by)

    def stop_reasons(self) -> dict[str, int]:
        """How many (β, path) minimisations stopped for each reason: `converged_decrease`
        and `converged_gradient` (`successful`, by that rule), then the other
        [`deepest.RESULTS`][] codes by name."""
        codes = codes_of(self.result)
        counts = {
            f"converged_{rule}": int(np.sum(self.converged & (self.converged_by == rule)))
            for rule in ("decrease", "gradient")
        }
        for item in (
            RESULTS.nonlinear_max_steps_reached,
            RESULTS.stalled,
            RESULTS.nonfinite,
            RESULTS.not_reached,
        ):
            counts[name_of(codes_of(item))] = int(np.sum(codes == codes_of(item)))
        return counts

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

    @renamed_keywords(i="path")
    def path_unknowns(self, path: int | None = None) -> PyTree[np.ndarray]:
        """The final unknowns of path `path` (default: `best`)."""
        path = self.best if path is None else path
        return jtu.tree_map(lambda a: a[path], self.unknowns)

    @renamed_keywords(t_end="t1")
    def predict(self, t1: float, path: int | None = None, n_times: int = 200):
        """Integrate a path's final state and parameters past the window, to the end time
        `t1`.

        **Returns:** `(times, states)` from the window's end to `t1`.
        """
        if self.problem is None:
            raise ValueError("predict needs the problem (pass it to load_result) with a forecast.")
        return self.problem.forecast(self.path_unknowns(path), t1, n_times)

    @renamed_keywords(i="path")
    def model(self, path: int | None = None):
        """The model (e.g. trained network) of path `path` (default: `best`)."""
        if self.problem is None:
            raise ValueError("This result's problem does not define a model of its unknowns.")
        return self.problem.to_model(self.path_unknowns(path))

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

    @property
    def params_at_bound(self) -> dict[str, np.ndarray]:
        """{name: (n_paths, size) bool}: the entries of each bounded parameter (an
        assimilation's `bounds=`, known when the result has its problem) that end on a
        bound, within 1e-6 of the box's width (√ε in a lower precision; of max(|bound|, 1)
        for a one-sided box)."""
        out = {}
        params = self.views.get("params", {})
        bounds = {} if self.problem is None else self.problem.parameter_bounds
        for name, (low, high) in bounds.items():
            if name not in params:
                continue
            theta = np.asarray(params[name]).reshape(self.n_paths, -1)
            relative = max(_AT_BOUND, float(np.sqrt(np.finfo(theta.dtype).eps)))
            finite = [abs(b) for b in (low, high) if np.isfinite(b)]
            width = high - low if len(finite) == 2 else max(finite + [1.0])
            out[name] = (theta - low <= relative * width) | (high - theta <= relative * width)
        return out

    def warnings(self) -> list[str]:
        """What in this result needs a look, as lines of text (empty if nothing does): the
        paths that turned non-finite, and each bounded parameter of the best path that
        ends on a bound of an assimilation's `bounds=` (within 1e-6 of the bounds' width,
        √ε in a lower precision; known when the result has its problem): the minimisers
        project onto a bound, so an estimate there is a constrained minimum whose
        gradient pushes out of the box."""
        lines = []
        bad = int(np.sum(~self.finite))
        if bad:
            lines.append(
                f"{bad} of {self.n_paths} paths ({bad / self.n_paths:.0%}) turned non-finite "
                "(the model returned NaN or inf along them; their later levels are NaN): "
                "check the model at the states they reached, rf0 and the time step."
            )
        best = self.best
        params = self.views.get("params", {})
        for name, flags in self.params_at_bound.items():
            low, high = self.problem.parameter_bounds[name]
            theta = np.asarray(params[name]).reshape(self.n_paths, -1)
            at_low, at_high = (
                flags & (theta <= (low + high) / 2),
                flags & (theta > (low + high) / 2),
            )
            sides = [s for s, at in (("lower", at_low), ("upper", at_high)) if at[best].any()]
            if not sides:
                continue
            ends = " and ".join(
                f"its {side} bound {low if side == 'lower' else high:g}" for side in sides
            )
            pinned = int(np.any(flags, axis=1).sum())
            lines.append(
                f"parameter {name!r} of the best path (path {best}) ends on {ends} (bounds "
                f"({low:g}, {high:g}); {pinned} of {self.n_paths} paths end on a bound): the "
                "action's minimum lies at or past the bound; widen bounds= or check the model."
            )
        return lines

    @classmethod
    def load(cls, path: str | os.PathLike, problem: AbstractProblem | None = None):
        """Read a result written by `save` (or by `deepest.save_result` of an earlier
        version) from `path`, a folder or a `.npz` file; pass the `problem` to use
        `predict` and `model`.

        A `problem` other than the one the result was annealed on (the problem digest it
        records: class, data, weights, settings) raises `ValueError`; results saved before
        the digest was recorded load without the check."""
        arrays, meta = load_npz(cls._file(path))
        stats = (meta.get("values", {}) if "kinds" in meta else meta).get("stats") or {}
        _check_problem(cls._file(path), stats, arrays, problem)
        if "kinds" in meta:
            return super().load(path, problem)
        return _load_legacy(arrays, meta, problem)


# A bounded parameter this close to a bound, relative to the bounds' width, is at it (in
# float64; √ε in a lower precision).
_AT_BOUND = 1e-6


def _leaf_shapes(tree) -> dict[str, tuple[int, ...]]:
    """{place: shape} of the arrays of `tree` (a file keeps no empty containers)."""
    return {jtu.keystr(k): tuple(np.shape(a)) for k, a in jtu.tree_flatten_with_path(tree)[0]}


def _check_problem(file: str, stats: dict, arrays: dict, problem) -> None:
    """Refuse a `problem` other than the one whose digest the result records: one whose
    unknowns have other shapes (the digest covers arrays, not settings such as
    `steps_per_obs`), or whose arrays (data, weights) differ once cast to the result's
    dtype, as the run cast them."""
    recorded = stats.get("problem")
    if problem is None or recorded is None:
        return
    if not isinstance(problem, AbstractProblem):
        raise TypeError(f"`problem` must be a deepest.AbstractProblem; got {type(problem)}.")
    unknowns = unflatten(arrays, "unknowns")
    dtype = np.asarray(jtu.tree_leaves(unknowns)[0]).dtype
    here = problem_digest(problem, dtype)
    expected = jax.eval_shape(problem.init, jax.random.key(0))
    shapes_here = _leaf_shapes(expected)
    shapes_there = _leaf_shapes(jtu.tree_map(lambda a: a[0], unknowns))
    if shapes_here != shapes_there:
        what = f"its unknowns have shapes {shapes_there}, this problem's {shapes_here}"
    elif here != recorded:
        what = "the shapes agree, but its data, weights or settings differ"
    else:
        return
    raise ValueError(
        f"{file} was computed for another problem ({what}): it records the problem "
        f"{recorded!r}, this one is {here!r} (class and a digest of its arrays). Pass the "
        "problem it was annealed on, or none."
    )


class SweepResult(eqx.Module):
    """The outcome of [`deepest.sweep`][]: one [`deepest.AnnealResult`][] per point, in
    order (`None` for a point of a group not started before Ctrl-C). A sequence: index it,
    iterate it, `len` it.

    `save(path)` writes each point's result to `path/point-K/result.npz` and the index
    `path/sweep.json`; `SweepResult.load(path, problems)` reads them back (pass the
    points' problems, one per point, for the methods that need them).
    """

    points: tuple[AnnealResult | None, ...]

    def __getitem__(self, i):
        return self.points[i]

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self):
        return iter(self.points)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> str:
        """Write every point's result below the folder `path`, atomically each.

        **Returns:** the path of the folder.
        """
        path = os.fspath(path)
        index = os.path.join(path, "sweep.json")
        if os.path.exists(index) and not overwrite:
            raise FileExistsError(f"{index} exists; pass overwrite=True to replace it.")
        os.makedirs(path, exist_ok=True)
        done = [i for i, r in enumerate(self.points) if r is not None]
        for i in done:
            self.points[i].save(os.path.join(path, f"point-{i}"), overwrite=True)
        text = json.dumps({"n_points": len(self.points), "saved": done}).encode()
        write_atomic(index, lambda f: f.write(text))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, problems=None) -> "SweepResult":
        """Read a sweep written by `save`; `problems`: one per point (or None)."""
        path = os.fspath(path)
        with open(os.path.join(path, "sweep.json")) as f:
            index = json.load(f)
        n = index["n_points"]
        problems = [None] * n if problems is None else list(problems)
        if len(problems) != n:
            raise ValueError(f"Give one problem per point: {n} points, {len(problems)} problems.")
        points = [None] * n
        for i in index["saved"]:
            points[i] = AnnealResult.load(os.path.join(path, f"point-{i}"), problems[i])
        return cls(tuple(points))


def save_result(result: AnnealResult, directory: str | os.PathLike, overwrite: bool = False) -> str:
    """Write an [`deepest.AnnealResult`][] to `directory/result.npz`: `result.save`."""
    return result.save(directory, overwrite=overwrite)


def load_result(
    directory: str | os.PathLike, problem: AbstractProblem | None = None
) -> AnnealResult:
    """Read an [`deepest.AnnealResult`][] written by `AnnealResult.save` (or
    [`deepest.save_result`][], including those of earlier versions):
    `AnnealResult.load`."""
    return AnnealResult.load(directory, problem)


def _old_codes(arrays):
    """Stop codes for a result saved before they were recorded: converged levels count as
    `converged_decrease`, the others as `max_steps`, a non-finite path's from its first
    NaN level on as `non_finite` then `not_reached`."""
    codes = np.where(arrays["converged"], StopCode.converged_decrease, StopCode.max_steps)
    nan = np.isnan(arrays["action"])
    first_nan = nan & (np.cumsum(nan, axis=0) == 1)
    codes = np.where(nan, StopCode.not_reached, codes)
    return np.where(first_nan, StopCode.non_finite, codes).astype(np.int32)


def _load_legacy(arrays, meta, problem) -> AnnealResult:
    """A result file of the layout before `AnnealResult.save` wrote its kinds."""
    saved = unflatten(arrays, "saved")
    codes = arrays["stop_reason"] if "stop_reason" in arrays else _old_codes(arrays)
    return AnnealResult(
        rf=arrays["rf"],
        action=arrays["action"],
        measurement_error=arrays["measurement_error"],
        model_error=arrays["model_error"],
        **from_stop_codes(codes),
        iterations=arrays["iterations"],
        unknowns=unflatten(arrays, "unknowns"),
        saved={int(k): v for k, v in saved.items()},
        views=unflatten(arrays, "views"),
        stats=meta["stats"],
        expected_action=meta["expected_action"],
        problem=problem,
        partial=bool(meta.get("partial", False)),
    )


def check_anneal_throw(result: AnnealResult, throw: bool, what: str = "anneal") -> None:
    """`throw` of [`deepest.anneal`][] and of each point of [`deepest.sweep`][]: raise
    when every path turned non-finite (see [`deepest.RESULTS`][])."""
    check_throw(
        throw,
        result.finite,
        result.path_result,
        f"{what}: every path turned non-finite; check the model, the data and rf0",
    )
