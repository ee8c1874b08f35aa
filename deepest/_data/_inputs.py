"""Driving inputs u(t) of a model: signals sampled on a grid, interpolated in between."""

import math
import os
import zipfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real

from ._twin import _check_real, _csv_number, concrete

INTERPOLATIONS = ("linear", "cubic")
"""The interpolations of [`deepest.Inputs`][] (`interpolation`)."""

_SNAP_ULPS = 64
"""A time within this many units of rounding (of the grid's largest |t|) of a grid time is
taken for that grid time."""


class Inputs(eqx.Module):
    r"""Driving input signals u(t) ∈ ℝᵏ (a stimulus, an injected current), sampled at times
    t_0 < t_1 < … < t_{n−1} (any spacing, not necessarily the data's) and interpolated in
    between, so that a discretisation can evaluate u wherever it needs: at nodes,
    midpoints and Runge–Kutta stages.

    - `interpolation="linear"`: piecewise linear, u(t) = (1 − s) u_i + s u_{i+1} with
      s = (t − t_i)/(t_{i+1} − t_i). Continuous; exact for linear signals.
    - `interpolation="cubic"`: the cubic Hermite interpolant of the samples and of slopes
      m_j from finite differences: m_j is the derivative at t_j of the parabola through
      three neighbouring samples: j − 1, j, j + 1 inside, and one-sided at the ends
      (0, 1, 2 at t_0; n − 3, n − 2, n − 1 at t_{n−1}). On a uniform grid the inside
      slopes are the central differences (u_{j+1} − u_{j−1})/2h, i.e. the Catmull–Rom
      spline, and the end ones (∓3u_j ± 4u_{j±1} ∓ u_{j±2})/2h. Continuously
      differentiable; reproduces quadratics exactly on any grid, and its error for a
      smooth signal is O(h³). Not shape-preserving: it may overshoot between the samples
      of a rough signal. With two samples it is linear.

    At a grid time the value is the sample itself, bit for bit, even when the time
    carries rounding: a time within 64 units of rounding (of the grid's largest |t|) of a
    grid time is taken for it. Varanneal feeds its models the samples at the grid
    points, and a model grid t_0 + kΔ computed in floating point differs from the inputs'
    grid by an ulp or so; so the model sees the samples on its own grid, and on a grid of
    half its step (Simpson–Hermite's midpoints) too. Derivatives with respect to t are
    those of the interpolant all the same.

    Outside [t_0, t_{n−1}] the value is held at the end sample (zero slope). Nothing
    should need it: [`deepest.Assimilation`][] and [`deepest.twin_experiment`][] check
    with `check_covers` that the inputs cover the window (and a prediction), before any
    compute.

    **Arguments:**

    - `times`: the sample times (n,), n ≥ 2, finite and strictly increasing.
    - `values`: the samples (n,) of one signal or (n, k) of k signals, finite.
    - `interpolation`: `"linear"` (default) or `"cubic"`.

    Checks run when the object is built, before any compute (those of values only for
    concrete ones: `Inputs` may be built inside `jax.jit` from traced arrays). The times
    and values share one floating dtype.

    **Example:**

    ```python
    t = np.linspace(0.0, 10.0, 401)
    inputs = deepest.Inputs(t, np.sin(t), interpolation="cubic")
    inputs(0.025)  # the sample sin(0.025), shape (1,)
    inputs(0.0125)  # interpolated
    inputs = deepest.Inputs.load("stim.csv")  # times, then one column per signal
    ```
    """

    times: Float[Array, " n_times"]
    values: Float[Array, "n_times n_inputs"]
    interpolation: str = eqx.field(static=True)

    def __init__(
        self,
        times: Real[ArrayLike, " n_times"],
        values: Real[ArrayLike, "n_times *n_inputs"],
        interpolation: str = "linear",
    ):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Unknown `interpolation` {interpolation!r}; choose one of "
                f"{', '.join(map(repr, INTERPOLATIONS))}."
            )
        _check_real("times", times)
        _check_real("values", values)
        times, values = jnp.asarray(times), jnp.asarray(values)
        # NumPy's promotion, not JAX's: float32 times with float64 values are fine here
        # (under strict promotion too), as is a grid of integers.
        dtype = np.promote_types(times.dtype, values.dtype)
        if not np.issubdtype(dtype, np.floating):
            dtype = jnp.result_type(float)
        dtype = jax.dtypes.canonicalize_dtype(dtype)
        times, values = times.astype(dtype), values.astype(dtype)
        if times.ndim != 1 or times.size < 2:
            raise ValueError(
                f"`times` must be 1-D with at least 2 samples; got shape {times.shape}."
            )
        shape = values.shape
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[0] != times.size or values.shape[1] == 0:
            raise ValueError(
                f"`values` must have shape (n_times,) or (n_times, n_inputs) with "
                f"n_times = {times.size} (one row per time) and n_inputs ≥ 1; got {shape}."
            )
        known = concrete(times)
        if known is not None:
            _check_times(known, _tolerance(np.max(np.abs(known[[0, -1]])), dtype))
        known = concrete(values)
        if known is not None and not np.all(np.isfinite(known)):
            row, column = np.argwhere(~np.isfinite(known))[0]
            where = f"row {row}" + (f", signal {column}" if known.shape[1] > 1 else "")
            at = "" if concrete(times) is None else f" (t = {float(times[row])})"
            raise ValueError(
                f"The input `values` are not finite ({known[row, column]}) at {where}{at}; "
                "every sample must be a finite number."
            )
        self.times = times
        self.values = values
        self.interpolation = interpolation

    @property
    def n_inputs(self) -> int:
        """The number k of signals."""
        return self.values.shape[1]

    @property
    def n_times(self) -> int:
        """The number n of samples."""
        return self.times.shape[0]

    def __call__(self, t: Real[ArrayLike, ""]) -> Float[Array, " n_inputs"]:
        """The k signals at the scalar time `t` (safe under `jax.jit`, `jax.vmap`,
        `jax.grad`; use `jax.vmap` for several times)."""
        times, values = self.times, self.values
        t = jnp.asarray(t)
        if t.shape != ():
            raise ValueError(
                f"Inputs are evaluated at one scalar time; got shape {t.shape} (use "
                "jax.vmap for several)."
            )
        t = t.astype(times.dtype)
        last = self.n_times - 1
        i = jnp.clip(jnp.searchsorted(times, t, side="right") - 1, 0, last - 1)
        left, right = times[i], times[i + 1]
        # A time within rounding of a grid time becomes that grid time exactly, keeping
        # d/dt = 1 (`zero` is an exact zero whose derivative is 1).
        tol = _tolerance(jnp.maximum(jnp.abs(times[0]), jnp.abs(times[last])), times.dtype)
        zero = t - jax.lax.stop_gradient(t)
        t = jnp.where(
            jnp.abs(t - left) <= tol,
            left + zero,
            jnp.where(jnp.abs(right - t) <= tol, right + zero, t),
        )
        # Held at the ends; `where`, not `clip`, so that d/dt at t_0 and t_{n-1} is 1.
        t = jnp.where(t < times[0], times[0], jnp.where(t > times[last], times[last], t))
        h = right - left
        s = (t - left) / h  # in [0, 1]: exactly 0 at `left`, 1 at `right`
        y0, y1 = values[i], values[i + 1]
        d = y1 - y0
        # Each half of the interval from its nearer end (u = s − 1 is exact for s ≥ 1/2),
        # so that the value at a grid time is the sample itself, bit for bit.
        if self.interpolation == "linear":
            from_left, from_right = y0 + s * d, y1 + (s - 1) * d
        else:
            hm0, hm1 = h * self._slope(i), h * self._slope(i + 1)
            c3 = hm0 + hm1 - 2 * d
            c2_left, c2_right = 3 * d - 2 * hm0 - hm1, 2 * hm1 + hm0 - 3 * d
            u = s - 1
            from_left = y0 + s * (hm0 + s * (c2_left + s * c3))
            from_right = y1 + u * (hm1 + u * (c2_right + u * c3))
        return jnp.where(s < 0.5, from_left, from_right)

    def _slope(self, j: Array) -> Float[Array, " n_inputs"]:
        """The cubic interpolant's slope at grid time j: the derivative there of the
        parabola through samples c − 1, c, c + 1, c = j clipped to the inside."""
        times, values = self.times, self.values
        if self.n_times == 2:
            return (values[1] - values[0]) / (times[1] - times[0])
        c = jnp.clip(j, 1, self.n_times - 2)
        ta, tb, tc = times[c - 1], times[c], times[c + 1]
        ya, yb, yc = values[c - 1], values[c], values[c + 1]
        first, second = (yb - ya) / (tb - ta), (yc - yb) / (tc - tb)
        x = times[j]
        return first + (second - first) * ((x - ta) + (x - tb)) / (tc - ta)

    def covers(self, t0: float, t1: float) -> bool:
        """Whether the samples span [`t0`, `t1`] (to the rounding tolerance at which a
        time is taken for a grid time). Needs concrete times (not traced)."""
        known = concrete(self.times)
        if known is None:
            raise ValueError(
                "`Inputs.covers` needs concrete times; these are traced (inside jax.jit)."
            )
        tol = _tolerance(np.max(np.abs(known[[0, -1]])), known.dtype)
        low, high = min(t0, t1), max(t0, t1)
        return bool(known[0] - tol <= low and high <= known[-1] + tol)

    def check_covers(self, t0: float, t1: float, what: str) -> None:
        """A `ValueError` naming `what` (e.g. `"the window"`) unless the samples span
        [`t0`, `t1`]; does nothing while the times are traced."""
        known = concrete(self.times)
        if known is None or self.covers(t0, t1):
            return
        raise ValueError(
            f"The inputs cover [{float(known[0])}, {float(known[-1])}]; {what} needs "
            f"[{float(t0)}, {float(t1)}]. Give samples over the whole of it."
        )

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, time_column: int = 0, interpolation: str = "linear"
    ) -> "Inputs":
        """Read inputs from a file.

        - `.csv`: comma-separated, one row per time; the column `time_column` holds the
          times, the others the signals, in order. An optional header line (no cell a
          number) is skipped, as are blank lines and `#` comments. A cell that is not a
          finite number, a ragged row or a time that does not increase is a `ValueError`
          naming the file, line and column.
        - `.npy`: a 2-D array, laid out as the CSV file.
        - `.npz`: arrays `times` (n,) and `values` (n,) or (n, k); `time_column` is unused.

        **Arguments:**

        - `path`: the file.
        - `time_column`: which column holds the times (`.csv`, `.npy`).
        - `interpolation`: as for [`deepest.Inputs`][].

        **Returns:** an [`deepest.Inputs`][]; every error names the file.
        """
        path = os.fspath(path)
        lines = None
        if path.endswith(".csv"):
            table, lines = _read_table(path)
        elif path.endswith(".npy"):
            try:
                table = np.load(path, allow_pickle=False)
            except ValueError as e:
                raise ValueError(f"{path}: not a `.npy` array of numbers: {e}") from None
        elif path.endswith(".npz"):
            try:
                with np.load(path, allow_pickle=False) as f:
                    data = dict(f)
            except (ValueError, zipfile.BadZipFile, EOFError):
                raise ValueError(f"{path}: not an `.npz` file (a zip archive of arrays).") from None
            missing = [k for k in ("times", "values") if k not in data]
            if missing:
                raise ValueError(
                    f"{path}: an `.npz` file of inputs holds arrays `times` and `values`; "
                    f"it lacks {', '.join(map(repr, missing))} (it has {sorted(data)})."
                )
            try:
                return cls(data["times"], data["values"], interpolation=interpolation)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
        else:
            raise ValueError(
                f"{path}: inputs are read from `.csv`, `.npy` or `.npz` files; name the file "
                "with one of these endings."
            )
        if table.ndim != 2 or table.shape[1] < 2:
            raise ValueError(
                f"{path}: expected a table of a time column and at least one signal column; "
                f"got an array of shape {table.shape}."
            )
        width = table.shape[1]
        if not -width <= time_column < width:
            raise ValueError(
                f"{path}: `time_column` {time_column} is out of range for {width} columns."
            )
        time_column %= width
        if lines is not None:
            back = np.flatnonzero(np.diff(table[:, time_column]) <= 0)
            if back.size:
                i = back[0]
                raise ValueError(
                    f"{path}:{lines[i + 1]}:{time_column + 1}: the time "
                    f"{table[i + 1, time_column]} does not follow {table[i, time_column]} "
                    f"(line {lines[i]}); the times must be strictly increasing."
                )
        signals = [c for c in range(width) if c != time_column]
        try:
            return cls(table[:, time_column], table[:, signals], interpolation=interpolation)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def _tolerance(scale, dtype):
    """How close to a grid time a time is taken for it: 64 units of rounding of `scale`,
    the grid's largest |t| (the rounding of a grid t_0 + kΔ computed in floating point)."""
    return _SNAP_ULPS * float(jnp.finfo(dtype).eps) * scale


def _check_times(times: np.ndarray, tol: float) -> None:
    """A `ValueError` naming the first bad time unless `times` are finite and strictly
    increasing, their gaps wider than twice the tolerance of a grid time."""
    bad = np.flatnonzero(~np.isfinite(times))
    if bad.size:
        raise ValueError(
            f"The input `times` are not finite ({times[bad[0]]}) at index {bad[0]}; every "
            "time must be a finite number."
        )
    gaps = np.diff(times)
    bad = np.flatnonzero(gaps <= 0)
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"The input `times` must be strictly increasing; times[{i + 1}] = "
            f"{float(times[i + 1])} follows times[{i}] = {float(times[i])}."
        )
    bad = np.flatnonzero(gaps <= 2 * tol)
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"The input `times` {float(times[i])} and {float(times[i + 1])} (indices {i}, "
            f"{i + 1}) are too close to tell apart from rounding (within {2 * tol:.3g}); "
            "space the samples further apart."
        )


def _read_table(path: str) -> tuple[np.ndarray, list[int]]:
    """The numbers of the comma-separated file `path` as a 2-D array, and the line number
    of each row: an optional header (no cell a number) skipped, as are blank lines and `#`
    comments; every other cell a finite number, every row as long as the first."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text (UTF-8) CSV file: {e.reason}.") from None
    rows, numbers, width, first = [], [], None, True
    for number, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0]
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        parsed = [_csv_number(c) for c in cells]
        if first and all(p is None for p in parsed):  # a header
            first = False
            continue
        first = False
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            raise ValueError(
                f"{path}:{number}: expected {width} cells (as in the first row), got {len(cells)}."
            )
        for column, (cell, value) in enumerate(zip(cells, parsed), start=1):
            if value is None or not math.isfinite(value):
                raise ValueError(
                    f"{path}:{number}:{column}: cell {cell!r} is not a finite number; "
                    "every time and sample must be one."
                )
        rows.append(parsed)
        numbers.append(number)
    if not rows:
        raise ValueError(f"{path}: no rows of numbers.")
    return np.array(rows, dtype=float), numbers
