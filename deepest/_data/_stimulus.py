"""A chaotic injected current: the kind of stimulus the authors drive neuron models with."""

import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from ..models import Lorenz63


def chaotic_current(
    times: Float[ArrayLike, " n"],
    *,
    mean: float = 8.0,
    amplitude: float = 15.0,
    timescale: float = 5.0,
    x0: tuple[float, float, float] = (-8.0, 7.0, 27.0),
    interpolation: str = "linear",
):
    r"""A current I(t) = `mean` + `amplitude`·x(t/`timescale`)/std(x), x the first component
    of the Lorenz-63 system (σ = 10, ρ = 28, β = 8/3) from `x0`, sampled at `times`.

    Varied enough in amplitude and time scale that a neuron driven by it visits rest,
    subthreshold swings and bursts of spikes, which is what makes its parameters
    identifiable from the voltage alone (Toth et al. 2011; Meliza et al. 2014 use chaotic
    currents for that reason); deterministic, so experiments are reproducible. The defaults
    are the current of `benchmarks/bench_nakl.py`: of those measured there, the one whose
    100 ms of voltage pin NaKL's parameters closest (BENCHMARKS.md).

    **Arguments:**

    - `times`: the sample times (ms), increasing and equally spaced.
    - `mean`, `amplitude`: the current's mean and standard deviation (µA/cm²).
    - `timescale`: ms per Lorenz-63 time unit (its oscillations last about 0.7 units).
    - `x0`: the Lorenz-63 starting state.
    - `interpolation`: of the returned [`deepest.Inputs`][].

    **Returns:** a [`deepest.Inputs`][] of one signal on `times`.
    """
    from ._inputs import Inputs
    from ._twin import integrate

    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or times.size < 2:
        raise ValueError(f"`times` must be 1-D with at least two entries; got {times.shape}.")
    if not timescale > 0:
        raise ValueError(f"`timescale` must be positive; got {timescale}.")
    scaled = jnp.asarray((times - times[0]) / timescale, jnp.result_type(float))
    x = np.asarray(integrate(Lorenz63(), jnp.asarray(x0, scaled.dtype), scaled))[:, 0]
    current = mean + amplitude * (x - x.mean()) / x.std()
    return Inputs(times, current, interpolation=interpolation)
