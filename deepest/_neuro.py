"""What to measure of a neuron's predicted voltage: its spike times, and how well they
coincide with the recorded ones (the coincidence factor Γ); and a plot of data, estimate,
prediction and stimulus.

These run on the host, in NumPy, after an estimate or a prediction has been made: they
take concrete arrays (not traced ones) and return NumPy arrays and floats.
"""

import numpy as np
from jaxtyping import ArrayLike, Float


def _vector(name: str, x) -> np.ndarray:
    """`x` as a finite 1-D float array, or a `ValueError` naming it."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D; got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{name}` must be finite; it holds NaN or infinity.")
    return x


def spike_times(
    times: Float[ArrayLike, " n"], voltage: Float[ArrayLike, " n"], threshold: float = 0.0
) -> Float[np.ndarray, " n_spikes"]:
    """The times at which `voltage` crosses `threshold` upwards.

    A crossing lies between samples i and i + 1 with V_i < threshold ≤ V_{i+1}; its time
    is that of the straight line between them,
    t = t_i + (threshold − V_i)/(V_{i+1} − V_i) · (t_{i+1} − t_i),
    exact for a voltage linear between samples (error O(Δt²) otherwise). Host-side NumPy:
    the arrays must be concrete.

    **Arguments:**

    - `times`: the sample times (n,), strictly increasing, e.g. in ms.
    - `voltage`: the membrane voltage (n,) at `times`, e.g. in mV.
    - `threshold`: the level a spike crosses (default 0, in the voltage's units).

    **Returns:** the crossing times, increasing, as a NumPy array (empty if none).

    ```python
    spikes = deepest.spike_times(times, prediction[:, 0], threshold=-20.0)
    ```
    """
    times, voltage = _vector("times", times), _vector("voltage", voltage)
    if times.shape != voltage.shape:
        raise ValueError(
            f"`times` and `voltage` must have the same length; got {times.size} and {voltage.size}."
        )
    if np.any(np.diff(times) <= 0):
        raise ValueError("`times` must be strictly increasing.")
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise ValueError(f"`threshold` must be finite; got {threshold}.")
    i = np.nonzero((voltage[:-1] < threshold) & (voltage[1:] >= threshold))[0]
    fraction = (threshold - voltage[i]) / (voltage[i + 1] - voltage[i])
    return times[i] + fraction * (times[i + 1] - times[i])


def _spike_train(name: str, spikes) -> np.ndarray:
    spikes = _vector(name, spikes)
    if np.any(np.diff(spikes) < 0):
        raise ValueError(f"`{name}` must be sorted in increasing order.")
    return spikes


def _coincidences(data: np.ndarray, model: np.ndarray, delta: float) -> int:
    """The largest number of pairs (data spike, model spike) within `delta` of each other,
    each spike in at most one pair. In time order, the earliest unmatched data spike takes
    the earliest unmatched model spike within reach: every data spike reaches an interval
    of the same length, so this greedy matching is a largest one."""
    i = j = count = 0
    while i < data.size and j < model.size:
        if model[j] < data[i] - delta:
            j += 1
        elif model[j] > data[i] + delta:
            i += 1
        else:
            count, i, j = count + 1, i + 1, j + 1
    return count


def coincidence_factor(
    data_spikes: Float[ArrayLike, " n_data"],
    model_spikes: Float[ArrayLike, " n_model"],
    *,
    delta: float = 2.0,
    duration: float,
) -> float:
    """The coincidence factor Γ of two spike trains: how many more spikes coincide, within
    ±`delta`, than for a Poisson train of the model's rate, normalised so that identical
    trains score 1 (Kistler, Gerstner & van Hemmen 1997, *Reduction of the Hodgkin–Huxley
    equations to a single-variable threshold model*, Neural Comput. 9:1015–1045; as used
    by Jolivet et al. 2008, *A benchmark test for a quantitative assessment of simple
    neuron models*, J. Neurosci. Methods 169:417–424):

    Γ = (N_coinc − ⟨N_coinc⟩)/(½(N_data + N_model)) · 1/(1 − 2νΔ),
    ⟨N_coinc⟩ = 2νΔ N_data, ν = N_model/duration.

    N_coinc counts pairs of a data and a model spike at most Δ apart, each spike in at
    most one pair (the largest such matching). Γ = 1 for identical trains, about 0 for a
    train independent of the data, and −2νΔ/(1 − 2νΔ) when no spike coincides. When one
    train is empty and the other is not, Γ = 0 (nothing coincides, and nothing was
    expected to). When both are empty Γ is NaN: it scores the timing of spikes and there
    is none to score, so a quiet window neither rewards nor penalises a model (average
    windows with `np.nanmean`, and count silent agreement separately if it matters).
    Host-side NumPy: the spike times must be concrete.

    **Arguments:**

    - `data_spikes`: the recorded spike times (e.g. from [`deepest.spike_times`][]),
      sorted, in the same units as `delta` and `duration`.
    - `model_spikes`: the model's spike times, sorted.
    - `delta`: the coincidence window Δ > 0 (default 2, i.e. 2 ms for times in ms).
    - `duration`: the length of the recording the trains come from, > 0.

    **Returns:** Γ, a float (NaN if both trains are empty).

    Raises `ValueError` for Δ ≤ 0, a duration ≤ 0 or shorter than the spikes span,
    unsorted or non-finite spike times, or a model train so dense that 2νΔ ≥ 1 (then
    chance alone makes every spike coincide, and Γ is undefined).

    ```python
    gamma = deepest.coincidence_factor(data_spikes, model_spikes, delta=2.0, duration=500.0)
    ```
    """
    data = _spike_train("data_spikes", data_spikes)
    model = _spike_train("model_spikes", model_spikes)
    delta, duration = float(delta), float(duration)
    if not (np.isfinite(delta) and delta > 0):
        raise ValueError(f"`delta` must be positive and finite; got {delta}.")
    if not (np.isfinite(duration) and duration > 0):
        raise ValueError(f"`duration` must be positive and finite; got {duration}.")
    both = np.concatenate([data, model])
    if both.size and np.ptp(both) > duration:
        raise ValueError(
            f"The spikes span {np.ptp(both)}, longer than `duration`={duration}: give the "
            "length of the recording they come from."
        )
    if data.size + model.size == 0:
        return float("nan")
    chance = 2 * delta * model.size / duration  # 2νΔ
    if chance >= 1:
        raise ValueError(
            f"2νΔ = {chance:.3g} ≥ 1 (ν = {model.size}/{duration} model spikes per unit "
            f"time, Δ = {delta}): any spike would coincide by chance; use a smaller `delta`."
        )
    expected = chance * data.size
    coincident = _coincidences(data, model, delta)
    return float((coincident - expected) / (0.5 * (data.size + model.size)) / (1 - chance))


def plot_neuron(
    times: Float[ArrayLike, " n"],
    voltage_data: Float[ArrayLike, " n"],
    estimate: Float[ArrayLike, " n"],
    *,
    prediction=None,
    stimulus=None,
    truth=None,
    ax=None,
):
    """A neuron's measured voltage, its estimate over the window, the prediction past the
    window, and the injected current beneath.

    **Arguments:**

    - `times`, `voltage_data`: the measured voltage (n,) at the window's times (n,).
    - `estimate`: the estimated voltage (n,) at `times`.
    - `prediction`: `(times, voltage)` of the prediction past the window, if any.
    - `stimulus`: `(times, current)` of the injected current, drawn in a panel beneath.
    - `truth`: `(times, voltage)` of the true voltage (a twin experiment), if known.
    - `ax`: a Matplotlib axes to draw the voltage on, or with `stimulus` a pair of axes
      (voltage, current); by default a new figure.

    **Returns:** the figure.
    """
    import matplotlib.pyplot as plt

    times, voltage_data = _vector("times", times), _vector("voltage_data", voltage_data)
    estimate = _vector("estimate", estimate)
    if not times.shape == voltage_data.shape == estimate.shape:
        raise ValueError(
            "`times`, `voltage_data` and `estimate` must have the same length; got "
            f"{times.size}, {voltage_data.size} and {estimate.size}."
        )
    if ax is None:
        if stimulus is None:
            fig, v_ax = plt.subplots(figsize=(8, 3))
        else:
            fig, (v_ax, i_ax) = plt.subplots(
                2, 1, figsize=(8, 4), sharex=True, height_ratios=(3, 1)
            )
    else:
        axes = np.ravel(np.asarray(ax, dtype=object))
        if axes.size != (1 if stimulus is None else 2):
            raise ValueError(
                "`ax` must be one axes, or with `stimulus` a pair (voltage, current); got "
                f"{axes.size}."
            )
        v_ax, i_ax = axes[0], axes[-1]
        fig = v_ax.figure
    v_ax.plot(times, voltage_data, ".", color="0.6", ms=2, label="data")
    if truth is not None:
        v_ax.plot(*truth, "k--", lw=0.8, label="truth")
    v_ax.plot(times, estimate, color="C0", lw=1.2, label="estimate")
    if prediction is not None:
        v_ax.plot(*prediction, color="C2", lw=1.2, label="prediction")
        v_ax.axvline(times[-1], color="0.4", lw=0.8, ls=":")
    v_ax.set_ylabel("V (mV)")
    v_ax.legend(loc="upper right", fontsize="small")
    if stimulus is not None:
        i_ax.plot(*stimulus, color="C3", lw=1.0)
        i_ax.set_ylabel("I (µA/cm²)")
        i_ax.set_xlabel("t (ms)")
    else:
        v_ax.set_xlabel("t (ms)")
    return fig
