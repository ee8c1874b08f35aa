"""Observations of a dynamical system, loaders, and twin experiments."""

import math
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from .._io import write_atomic
from .._misc import format_bytes, host_memory
from ..models import AbstractModel, parametrised


def indices(name: str, value) -> tuple[int, ...]:
    """The component indices `value` (a sequence or array of integers) as a tuple of ints;
    anything else (a float, a string) is a `ValueError` naming `name`."""
    array = np.asarray(value)
    if array.size and (array.dtype == bool or not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"`{name}` must hold integer component indices; got {value!r}.")
    return tuple(int(i) for i in array.reshape(-1))


def _check_real(name: str, value) -> None:
    """A `ValueError` naming `name` unless `value` is an array of real numbers (not text,
    complex numbers or a ragged list); read from its dtype, so traced values too."""
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(value).dtype
        except ValueError as e:  # a ragged list
            raise ValueError(f"`{name}` must be an array of real numbers: {e}") from None
    if np.dtype(dtype).kind not in "iuf":
        raise ValueError(f"`{name}` must be an array of real numbers; got dtype {dtype}.")


def concrete(x: ArrayLike) -> np.ndarray | None:
    """`x` as a NumPy array, or None while it is traced (inside `jax.jit`, `jax.grad` or
    `jax.vmap`): the checks that need values run only on concrete ones."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


class Observations(eqx.Module):
    """Noisy measurements `y_l(t_n)` of components `observed` of a D-component state.

    **Arguments:**

    - `times`: the observation times t_0 < t_1 < … (N_obs,).
    - `values`: the measurements (N_obs, L), column l measuring component `observed[l]`.
    - `observed`: the L measured component indices, distinct and non-negative.
    - `truth`: optional true states at the observation times (N_obs, D), for twin experiments.
    - `mask`: optional boolean (N_obs, L): which entries were measured (default: all).
    - `noise`: optional measurement noise σ (scalar or (L,)), if known.
    - `true_params`: optional dict of the true model parameters, for twin experiments.

    Checks run when the object is built, before any compute: shapes agree, times increase,
    indices are distinct, and the measured values are finite (the checks of values only
    for concrete ones: Observations may be built inside `jax.jit`, `jax.grad` or `jax.vmap`
    from traced values).
    """

    times: Float[Array, " n_obs"]
    values: Float[Array, "n_obs n_observed"]
    observed: tuple[int, ...] = eqx.field(static=True)
    truth: Float[Array, "n_obs dim"] | None = None
    mask: Bool[Array, "n_obs n_observed"] | None = None
    noise: Float[Array, "*n_observed"] | None = None
    true_params: dict[str, Array] | None = None

    def __init__(
        self,
        times: Float[ArrayLike, " n_obs"],
        values: Float[ArrayLike, "n_obs n_observed"],
        observed: Sequence[int] | Int[ArrayLike, " n_observed"],
        truth: Float[ArrayLike, "n_obs dim"] | None = None,
        mask: Bool[ArrayLike, "n_obs n_observed"] | None = None,
        noise: ArrayLike | None = None,
        true_params: dict[str, ArrayLike] | None = None,
    ):
        observed = indices("observed", observed)
        _check_real("times", times)
        _check_real("values", values)
        times, values = jnp.asarray(times), jnp.asarray(values)
        if times.ndim != 1 or times.size < 2:
            raise ValueError(f"`times` must be 1-D with at least 2 entries; got {times.shape}.")
        concrete_times = concrete(times)
        if concrete_times is not None and (
            not np.all(np.isfinite(concrete_times)) or np.any(np.diff(concrete_times) <= 0)
        ):
            raise ValueError("`times` must be finite and strictly increasing.")
        if len(observed) == 0:
            raise ValueError("`observed` must name at least one component.")
        if min(observed) < 0:
            raise ValueError(f"Observed indices must be non-negative; got {observed}.")
        if len(set(observed)) != len(observed):
            raise ValueError(f"Observed indices must be distinct; got {observed}.")
        if values.ndim == 1 and len(observed) == 1:
            values = values[:, None]
        if values.shape != (times.size, len(observed)):
            raise ValueError(
                f"`values` must have shape (n_times, n_observed) = "
                f"({times.size}, {len(observed)}); got {values.shape}."
            )
        checked = concrete(values)
        if mask is not None:
            mask = jnp.asarray(mask, dtype=bool)
            if mask.shape != values.shape:
                raise ValueError(f"`mask` must have shape {values.shape}; got {mask.shape}.")
            concrete_mask = concrete(mask)
            if concrete_mask is not None and not concrete_mask.any():
                raise ValueError("`mask` hides every measurement.")
            checked = None if checked is None or concrete_mask is None else checked[concrete_mask]
        if checked is not None and not np.all(np.isfinite(checked)):
            raise ValueError("The measured `values` contain NaN or inf.")
        if truth is not None:
            truth = jnp.asarray(truth)
            if truth.ndim != 2 or truth.shape[0] != times.size:
                raise ValueError(f"`truth` must have shape (n_times, dim); got {truth.shape}.")
            if max(observed) >= truth.shape[1]:
                raise ValueError(
                    f"Observed index {max(observed)} is out of range for truth of dimension "
                    f"{truth.shape[1]}."
                )
        if noise is not None:
            noise = jnp.asarray(noise)
            concrete_noise = concrete(noise)
            if noise.shape not in ((), (len(observed),)) or (
                concrete_noise is not None and np.any(concrete_noise <= 0)
            ):
                raise ValueError("`noise` must be a positive scalar or one value per component.")
        self.times = times
        self.values = values
        self.observed = observed
        self.truth = truth
        self.mask = mask
        self.noise = noise
        self.true_params = (
            None if true_params is None else {k: jnp.asarray(v) for k, v in true_params.items()}
        )

    @property
    def n_times(self) -> int:
        return self.times.shape[0]

    def save(self, path: str | os.PathLike) -> None:
        """Write the observations to `path` (`.npz`) or, values only, `path` (`.csv`)."""
        path = os.fspath(path)
        if path.endswith(".csv"):
            header = ",".join(["t"] + [f"x{i}" for i in self.observed])
            table = np.column_stack([np.asarray(self.times), np.asarray(self.values)])
            if self.mask is not None:
                table[:, 1:][~np.asarray(self.mask)] = np.nan
            write_atomic(
                path, lambda f: np.savetxt(f, table, delimiter=",", header=header, comments="")
            )
            return
        arrays = {"times": self.times, "values": self.values, "observed": self.observed}
        for name in ("truth", "mask", "noise"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        for name, value in (self.true_params or {}).items():
            arrays[f"true_params.{name}"] = value
        if not path.endswith(".npz"):  # as np.savez names a path without the extension
            path += ".npz"
        write_atomic(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Observations":
        """Read observations from `.npz` (as written by `save`) or `.csv`.

        A CSV file has a header `t,x<i>,x<j>,…` naming the measured components, one row per
        time; empty or NaN cells are unmeasured (they become the `mask`). Any other cell
        that is not a finite number, a ragged row or a bad header is a `ValueError` naming
        the file, line and column (the 1-based cell number); a column or time with no
        measurement is a `UserWarning`.
        """
        path = os.fspath(path)
        if path.endswith(".csv"):
            times, values, observed, mask = _read_csv(path)
            try:
                return cls(
                    times,
                    np.where(mask, values, 0.0),
                    observed,
                    mask=None if mask.all() else mask,
                )
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
        if not path.endswith(".npz"):
            raise ValueError(
                f"{path}: observations are read from `.npz` (as `Observations.save` writes "
                "them) or `.csv` files; name the file with one of these endings."
            )
        try:
            with np.load(path, allow_pickle=False) as f:
                data = dict(f)
        except (ValueError, zipfile.BadZipFile, EOFError):
            raise ValueError(
                f"{path}: not an `.npz` file of observations (not a zip archive of arrays, "
                "as `Observations.save` writes)."
            ) from None
        true_params = {
            k.split(".", 1)[1]: data.pop(k) for k in list(data) if k.startswith("true_params.")
        }
        fields = ("times", "values", "observed", "truth", "mask", "noise")
        missing = [k for k in fields[:3] if k not in data]
        unknown = sorted(set(data) - set(fields))
        if missing or unknown:
            raise ValueError(
                f"{path}: not an `.npz` file of observations (as `Observations.save` writes): "
                + (f"it lacks the arrays {missing}" if missing else f"unknown arrays {unknown}")
                + "."
            )
        try:
            return cls(**data, true_params=true_params or None)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def _csv_number(text: str) -> float | None:
    """The float in a CSV cell, or None if it is not a number (NaN and inf included)."""
    try:
        return float(text)
    except ValueError:
        return None


def _read_csv(path: str) -> tuple[np.ndarray, np.ndarray, list[int], np.ndarray]:
    """Times, values, observed indices and measured mask of the CSV file `path`, strictly:
    every cell a number, NaN or empty (the last two unmeasured); lines starting with `#`
    and blank lines are skipped, as are `#` comments at a line's end."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text (UTF-8) CSV file: {e.reason}.") from None
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}: empty CSV file; the header must read `t,x<i>,x<j>,...`.")
    header = [h.strip() for h in lines[0].split(",")]
    if header[0] != "t":
        raise ValueError(
            f"{path}:1:1: the CSV header must read `t,x<i>,x<j>,...`; its first cell is "
            f"{header[0]!r}, not 't'."
        )
    observed = []
    for column, name in enumerate(header[1:], start=2):
        match = re.fullmatch(r"x(\d+)", name, re.ASCII)
        if match is None:
            raise ValueError(
                f"{path}:1:{column}: the CSV header must read `t,x<i>,x<j>,...`; header cell "
                f"{name!r} is not `x` followed by a component index."
            )
        observed.append(int(match.group(1)))
    times, rows, numbers = [], [], []
    for number, line in enumerate(lines[1:], start=2):
        line = line.split("#", 1)[0]
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(header):
            raise ValueError(
                f"{path}:{number}: expected {len(header)} cells (as in the header), "
                f"got {len(cells)}."
            )
        row = []
        for column, cell in enumerate(cells, start=1):
            value = math.nan if cell == "" else _csv_number(cell)
            name = header[column - 1]
            if value is None:
                raise ValueError(
                    f"{path}:{number}:{column}: cell {cell!r} (column {name}) is not a number, "
                    "`nan` or empty."
                )
            if math.isinf(value):
                raise ValueError(
                    f"{path}:{number}:{column}: cell {cell!r} (column {name}) is infinite; "
                    "leave an unmeasured cell empty or `nan`."
                )
            if column == 1 and math.isnan(value):
                raise ValueError(f"{path}:{number}:1: the time (column t) is missing.")
            row.append(value)
        times.append(row[0])
        rows.append(row[1:])
        numbers.append(number)
    if not rows:
        raise ValueError(f"{path}: no data rows after the header.")
    values = np.array(rows, dtype=float).reshape(len(rows), len(observed))
    mask = ~np.isnan(values)
    if mask.any():
        for column in np.flatnonzero(~mask.any(axis=0)):
            warnings.warn(
                f"{path}: column {header[column + 1]} has no measurement (every cell is "
                "empty or NaN).",
                UserWarning,
                stacklevel=3,
            )
        empty = np.flatnonzero(~mask.any(axis=1))
        if empty.size:
            named = ", ".join(f"t={times[i]:g} (line {numbers[i]})" for i in empty[:5])
            more = f" and {empty.size - 5} more" if empty.size > 5 else ""
            warnings.warn(
                f"{path}: {'time' if empty.size == 1 else 'times'} {named}{more} "
                f"{'has' if empty.size == 1 else 'have'} no measurement (every cell empty "
                "or NaN).",
                UserWarning,
                stacklevel=3,
            )
    return np.array(times, dtype=float), values, observed, mask


def check_dimension(model, observed: Sequence[int], dim) -> int:
    """Check that a model of `dim` components exists and holds the `observed` indices."""
    dim = _check_whole("dim", dim, 1)
    if max(observed) >= dim:
        raise ValueError(
            f"Observed index {max(observed)} is out of range for a model with dim={dim} components."
        )
    if isinstance(model, AbstractModel):
        model.check_dim(dim)
    return dim


def integrate(
    model,
    x0: Float[ArrayLike, " dim"],
    times: Float[ArrayLike, " n"],
    substeps: int = 10,
    params=None,
    inputs=None,
) -> Float[Array, "n dim"]:
    """Integrate `model` from `x0` at `times[0]`, returning the states at `times`.

    Uses diffrax's Tsit5 with `substeps` fixed steps per interval of `times` (which must
    be equally spaced). A driven model gets `inputs` (a [`deepest.Inputs`][], which must
    cover `times`), evaluated at every stage.
    """
    field, _ = parametrised(model, params)
    field = _with_inputs(model, field, inputs, times)
    x0, times = jnp.asarray(x0), jnp.asarray(times)
    if x0.ndim != 1:
        raise ValueError(f"`x0` must be one state, of shape (dim,); got shape {x0.shape}.")
    if times.ndim != 1 or times.size < 1:
        raise ValueError(f"`times` must be 1-D with at least one entry; got shape {times.shape}.")
    substeps = _check_whole("substeps", substeps, 1)
    known = concrete(times)
    if known is not None and known.size > 1:
        _check_grid(known)
    return _integrate(field, x0, times, substeps)


class _Driven(eqx.Module):
    """`field(t, x, theta, u(t))` as `field(t, x, theta)`: a Module, so that equal models
    and inputs give equal terms and the compiled solve is reused."""

    field: Callable
    inputs: eqx.Module

    def __call__(self, t, x, theta):
        return self.field(t, x, theta, self.inputs(t))


def _with_inputs(model, field, inputs, times):
    """`field` with its input bound, after checking that a driven model gets inputs that
    cover `times` and an undriven one gets none."""
    from ..models import takes_input

    driven = takes_input(model)
    if driven != (inputs is not None):
        raise ValueError(
            "The model takes a driving input: pass `inputs=deepest.Inputs(...)`."
            if driven
            else "`inputs` were given, but the model takes none (call it as model(t, x, u) "
            "or F(t, x, params, u))."
        )
    if inputs is None:
        return field
    known = concrete(times)
    if known is not None and np.size(known):
        inputs.check_covers(float(np.min(known)), float(np.max(known)), "the integration")
    return _Driven(field, inputs)


def _check_grid(times: np.ndarray) -> None:
    """A `ValueError` unless `times` are finite, increasing and equally spaced (to the
    rounding of their dtype, at their size: `dt * arange(n)` passes)."""
    steps = np.diff(times)
    if not np.all(np.isfinite(times)):
        bad = int(np.flatnonzero(~np.isfinite(times))[0])
        raise ValueError(f"`times` must be finite; times[{bad}] is {times[bad]}.")
    if np.any(steps <= 0):
        i = int(np.flatnonzero(steps <= 0)[0])
        raise ValueError(
            f"`times` must increase; times[{i + 1}] = {times[i + 1]} follows times[{i}] = "
            f"{times[i]}."
        )
    check_equal_spacing(
        times, "`times` must be equally spaced (Tsit5 takes `substeps` fixed steps per interval)"
    )


def check_equal_spacing(times, message: str) -> None:
    """A `ValueError` starting with `message` unless the increasing `times` are equally
    spaced to the rounding of their dtype at the size of the time span: every step within
    64·ε·max|t| of the mean step. Physical times pass (`dt * arange(n)`, `linspace`, in
    float64 and float32: their steps differ by a few ε·max|t|); the error names the
    largest deviation."""
    times = np.asarray(times)
    steps = np.diff(times)
    if not steps.size:
        return
    eps = np.finfo(steps.dtype).eps if steps.dtype.kind == "f" else 0.0
    tolerance = 64 * eps * float(np.max(np.abs(times)))
    mean = float(np.mean(steps))
    deviation = np.abs(steps - mean)
    i = int(np.argmax(deviation))
    if deviation[i] > tolerance:
        raise ValueError(
            f"{message}: times[{i + 1}] − times[{i}] = {float(steps[i])!r} differs from the mean "
            f"step {mean!r} by {deviation[i]:.3g}, more than their rounding allows "
            f"({tolerance:.3g} = 64·ε·max|t|)."
        )


def _check_whole(name: str, value, low: int) -> int:
    """`value` as an int, or a `ValueError` naming `name` unless it is an integer ≥ `low`."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= low
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"`{name}` must be an integer ≥ {low}; got {value!r}.")
    return int(value)


def _check_number(name: str, value, low: float, strict: bool) -> float:
    """`value` as a float, or a `ValueError` naming `name` unless it is a finite number
    > `low` (≥ with `strict=False`)."""
    try:
        number = float(value)
        ok = not isinstance(value, bool) and math.isfinite(number)
        ok = ok and (number > low if strict else number >= low)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        sign = ">" if strict else "≥"
        raise ValueError(f"`{name}` must be a finite number {sign} {low:g}; got {value!r}.")
    return number


class _Autonomous(eqx.Module):
    """A diffrax vector field from `field(t, x, theta)`: a Module, so that equal models
    give equal terms and diffrax's compiled solve is reused."""

    field: Callable

    def __call__(self, t, x, args):
        return self.field(t, x, {})


@eqx.filter_jit
def _integrate(field, x0, times, substeps: int):
    dt0 = (times[1] - times[0]) / substeps
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_Autonomous(field)),
        diffrax.Tsit5(),
        times[0],
        times[-1],
        dt0,
        x0,
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=substeps * (times.shape[0] - 1) + 16,
    )
    return sol.ys


def check_twin_memory(dim, n_times, dt, spinup, name: str = "`n_times`") -> None:
    """Refuse a twin experiment whose arrays (its spin-up, its truth, observations and
    times, each twice over while they are made) cannot fit in the host's available
    memory, before any is made; `name` is how the error calls `n_times`."""
    n_spin = max(math.ceil(spinup / dt), 1)
    need = 2 * 8 * (n_spin * dim + n_times * (2 * dim + 1))
    free = host_memory()
    if free is not None and need > free:
        fits = max(free // (2 * 8 * (2 * dim + 1)) - n_spin, 0)
        raise ValueError(
            f"{name} = {n_times:,} observation times of {dim} components need about "
            f"{format_bytes(need)} to make; {format_bytes(free)} are free: at most "
            f"{fits:,} times fit."
        )


def twin_experiment(
    model,
    dim: int,
    n_times: int,
    dt: float,
    observed: Sequence[int],
    noise: float,
    key: PRNGKeyArray,
    *,
    spinup: float = 20.0,
    substeps: int = 10,
    x0: Float[ArrayLike, " dim"] | None = None,
    params=None,
    inputs=None,
) -> Observations:
    """Simulated data: integrate `model` onto its attractor, then observe with noise.

    The initial state (normal draws, or `x0`) is integrated for `spinup` time units, then
    over `n_times` observation times spaced `dt` from t = 0, with `substeps` Tsit5 steps
    per `dt`. A driven model gets `inputs` (a [`deepest.Inputs`][]) over the spin-up
    (from t = −`spinup`) and the observation times: they must cover both.
    The components `observed` are measured with Gaussian noise of standard deviation
    `noise`; the full true states and parameters are kept as `truth` / `true_params`.

    **Example:**

        data = deepest.twin_experiment(
            deepest.models.Lorenz96(8.17), dim=20, n_times=161, dt=0.025,
            observed=range(12), noise=0.4, key=jax.random.key(0))
    """
    dim = _check_whole("dim", dim, 1)
    n_times = _check_whole("n_times", n_times, 2)
    _check_number("dt", dt, 0, strict=True)
    _check_number("noise", noise, 0, strict=False)
    _check_number("spinup", spinup, 0, strict=False)
    substeps = _check_whole("substeps", substeps, 1)
    observed = indices("observed", list(observed))
    if not observed:
        raise ValueError("`observed` must name at least one component.")
    if any(i < 0 or i >= dim for i in observed):
        raise ValueError(f"Observed indices are out of range [0, {dim}): {observed}.")
    check_twin_memory(dim, n_times, dt, spinup)
    if isinstance(model, AbstractModel):
        model.check_dim(dim)
    if x0 is not None and jnp.shape(x0) != (dim,):
        raise ValueError(f"`x0` must have shape (dim,) = ({dim},); got {jnp.shape(x0)}.")
    _, values = parametrised(model, params)
    for name, value in values.items():
        known = concrete(value)
        if known is not None and not np.all(np.isfinite(known)):
            raise ValueError(f"The model's parameter {name!r} is not finite: {known}.")
    k0, k1 = jr.split(key)
    dtype = jnp.result_type(float)
    state = jr.normal(k0, (dim,), dtype) if x0 is None else jnp.asarray(x0, dtype)
    n_spin = max(int(math.ceil(spinup / dt)), 1)
    if inputs is not None:  # before any integration: the spin-up and the window
        start = -n_spin * dt if spinup > 0 else 0.0
        inputs.check_covers(start, (n_times - 1) * dt, "the twin experiment (spin-up and window)")
    if inputs is None:
        spin_times = dt * jnp.arange(n_spin + 1, dtype=dtype)
        spun = integrate(model, state, spin_times, substeps, params)[-1]
    elif spinup > 0:  # under the inputs, from t = −spinup
        spin_times = dt * jnp.arange(-n_spin, 1, dtype=dtype)
        spun = integrate(model, state, spin_times, substeps, params, inputs)[-1]
    else:
        spun = state
    times = dt * jnp.arange(n_times, dtype=dtype)
    truth = integrate(model, spun, times, substeps, params, inputs)
    obs = truth[:, jnp.asarray(observed)]
    values_noisy = obs + noise * jr.normal(k1, obs.shape, dtype)
    return Observations(
        times,
        jax.device_get(values_noisy),
        observed,
        truth=truth,
        noise=noise if noise > 0 else None,
        true_params=values,
    )
