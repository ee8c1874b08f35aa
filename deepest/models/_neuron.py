"""Conductance-based neuron models driven by an injected current: varanneal's NaKL model
and the standard Hodgkin–Huxley model."""

import dataclasses
from collections.abc import Collection

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._base import AbstractDrivenModel

_GATES = ((0.0, 1.0), (0.0, 1.0), (0.0, 1.0))
_STATE_BOUNDS = ((-100.0, 100.0), *_GATES)
"""V in mV, then the gating variables m, h, n, fractions in [0, 1]."""


def _boxes(model: type, conductances: Collection[str]) -> dict[str, tuple[float, float]]:
    """varanneal's boxes around a model's default (true) parameter values: ±50% for the
    conductances, ±5% for the others, low < high whatever the sign."""
    boxes = {}
    for f in dataclasses.fields(model):
        width = 0.5 if f.name in conductances else 0.05
        ends = (f.default * (1 - width), f.default * (1 + width))
        boxes[f.name] = (min(ends), max(ends))
    return boxes


def _check_four(name: str, dim: int) -> None:
    if dim != 4:
        raise ValueError(f"{name} has exactly 4 components (V, m, h, n); got dim={dim}.")


def _gate(v, z, vt, vs, t1, t2):
    """dz/dt = (z∞(V) − z)/τ(V) with z∞ = ½(1 + tanh((V − vt)/vs)) and
    τ = t1 + t2 (1 − tanh²((V − vt)/vs))."""
    s = jnp.tanh((v - vt) / vs)
    return (0.5 * (1 + s) - z) / (t1 + t2 * (1 - s**2))


class NaKL(AbstractDrivenModel):
    r"""varanneal's NaKL neuron: a sodium, a potassium and a leak current, the membrane
    capacitance C = 1 µF/cm² absorbed into the conductances. State x = (V, m, h, n),
    input u = (I,):

    dV/dt = g_Na m³h (E_Na − V) + g_K n⁴ (E_K − V) + g_L (E_L − V) + I(t),

    dz/dt = (z∞(V) − z)/τ_z(V), z∞ = ½(1 + tanh((V − Vt_z)/Vs_z)),
    τ_z = t1_z + t2_z (1 − tanh²((V − Vt_z)/Vs_z)), for z = m, h, n.

    Units: V and the E's, Vt's and Vs's in mV, t in ms (the τ's t1, t2 in ms), the g's in
    mS/cm², I in µA/cm². The defaults are the true values of varanneal's tutorial
    (`examples/jupyter-tutorial`, NaKL; github.com/paulrozdeba/varanneal), whose model is
    that of Toth, Kostuk, Meliza, Margoliash & Abarbanel (2011), *Dynamical estimation of
    neuron and network properties I: variational methods*, Biol. Cybern. 105:217–237.
    `NaKL.bounds` are the tutorial's boxes (±50% around the true conductances, ±5%
    around the other 15 parameters) and `NaKL.state_bounds` its state boxes (V in
    [−100, 100] mV, gates in [0, 1]).

    **Arguments:** the 18 parameters, each a float that may be estimated:

    - `gNa`, `gK`, `gL`: the maximal conductances (120, 20, 0.3 mS/cm²).
    - `ENa`, `EK`, `EL`: the reversal potentials (50, −77, −54 mV).
    - `Vtm`, `Vsm`, `t1m`, `t2m`: the m gate's midpoint, width, and τ's floor and bump
      (−40 mV, 1/0.06667 mV, 0.1 ms, 0.4 ms); likewise `Vth`, `Vsh`, `t1h`, `t2h` for h
      (−60, −1/0.06667, 1, 7; a negative width makes h inactivate with depolarisation)
      and `Vtn`, `Vsn`, `t1n`, `t2n` for n (−55, 1/0.03333, 1, 5).

    ```python
    model = deepest.models.NaKL()
    model(0.0, jnp.array([-65.0, 0.05, 0.6, 0.3]), jnp.array([10.0]))  # dx/dt
    ```
    """

    gNa: Float[ArrayLike, ""] = 120.0
    gK: Float[ArrayLike, ""] = 20.0
    gL: Float[ArrayLike, ""] = 0.3
    ENa: Float[ArrayLike, ""] = 50.0
    EK: Float[ArrayLike, ""] = -77.0
    EL: Float[ArrayLike, ""] = -54.0
    Vtm: Float[ArrayLike, ""] = -40.0
    Vsm: Float[ArrayLike, ""] = 1 / 0.06667
    t1m: Float[ArrayLike, ""] = 0.1
    t2m: Float[ArrayLike, ""] = 0.4
    Vth: Float[ArrayLike, ""] = -60.0
    Vsh: Float[ArrayLike, ""] = -1 / 0.06667
    t1h: Float[ArrayLike, ""] = 1.0
    t2h: Float[ArrayLike, ""] = 7.0
    Vtn: Float[ArrayLike, ""] = -55.0
    Vsn: Float[ArrayLike, ""] = 1 / 0.03333
    t1n: Float[ArrayLike, ""] = 1.0
    t2n: Float[ArrayLike, ""] = 5.0

    def __call__(
        self, t: ArrayLike, x: Float[Array, " 4"], u: Float[Array, " 1"]
    ) -> Float[Array, " 4"]:
        del t
        v, m, h, n = x[0], x[1], x[2], x[3]
        dv = (
            self.gNa * m**3 * h * (self.ENa - v)
            + self.gK * n**4 * (self.EK - v)
            + self.gL * (self.EL - v)
            + u[0]
        )
        dm = _gate(v, m, self.Vtm, self.Vsm, self.t1m, self.t2m)
        dh = _gate(v, h, self.Vth, self.Vsh, self.t1h, self.t2h)
        dn = _gate(v, n, self.Vtn, self.Vsn, self.t1n, self.t2n)
        return jnp.stack([dv, dm, dh, dn])

    def check_dim(self, dim: int) -> None:
        _check_four("NaKL", dim)


NaKL.bounds = _boxes(NaKL, ("gNa", "gK", "gL"))
NaKL.state_bounds = _STATE_BOUNDS

_SMALL = 1e-2
"""Below this |x|, x/(1 − e^{−x}) is taken from its Taylor series, whose next term there is
below 10⁻¹⁶: the quotient is 0/0 at x = 0 and its autodiff gradient cancels near it."""


def _x_over_expm1(x):
    """x/(1 − e^{−x}), with its limit 1 at x = 0: finite, and with finite derivatives
    under `jax.grad`, for every x (1 + x/2 + x²/12 − x⁴/720 + … near 0)."""
    small = jnp.abs(x) < _SMALL
    safe = jnp.where(small, 1.0, x)  # the other branch never sees 0, nor its gradient
    series = 1 + x / 2 + x**2 / 12 - x**4 / 720
    return jnp.where(small, series, safe / -jnp.expm1(-safe))


def hodgkin_huxley_rates(v: Float[ArrayLike, "*shape"]) -> tuple[Array, ...]:
    """The opening and closing rates (α_m, β_m, α_h, β_h, α_n, β_n) in 1/ms of the
    Hodgkin–Huxley gates at membrane potential `v` (mV, rest near −65 mV):

    α_m = 0.1 (V + 40)/(1 − e^{−(V+40)/10}), β_m = 4 e^{−(V+65)/18},
    α_h = 0.07 e^{−(V+65)/20}, β_h = 1/(1 + e^{−(V+35)/10}),
    α_n = 0.01 (V + 55)/(1 − e^{−(V+55)/10}), β_n = 0.125 e^{−(V+65)/80}.

    α_m and α_n have removable singularities at V = −40 and −55 mV (0/0, limits 1 and
    0.1); they are evaluated so that they and their gradients are finite there too.
    """
    v = jnp.asarray(v)
    alpha_m = _x_over_expm1((v + 40) / 10)
    beta_m = 4 * jnp.exp(-(v + 65) / 18)
    alpha_h = 0.07 * jnp.exp(-(v + 65) / 20)
    beta_h = 1 / (1 + jnp.exp(-(v + 35) / 10))
    alpha_n = 0.1 * _x_over_expm1((v + 55) / 10)
    beta_n = 0.125 * jnp.exp(-(v + 65) / 80)
    return alpha_m, beta_m, alpha_h, beta_h, alpha_n, beta_n


class HodgkinHuxley(AbstractDrivenModel):
    r"""The Hodgkin–Huxley (1952) squid-axon model in the modern convention (rest near
    −65 mV). State x = (V, m, h, n), input u = (I,):

    C dV/dt = g_Na m³h (E_Na − V) + g_K n⁴ (E_K − V) + g_L (E_L − V) + I(t),

    dz/dt = α_z(V)(1 − z) − β_z(V) z for z = m, h, n, with the rates of
    [`deepest.models.hodgkin_huxley_rates`][] (finite, with finite gradients, at their
    removable singularities V = −40 and −55 mV).

    Units: V and the E's in mV, t in ms, the g's in mS/cm², C in µF/cm², I in µA/cm².
    With the defaults the cell rests near −65 mV at I = 0 and fires repetitively for a
    constant I above about 6.3 µA/cm² from rest (e.g. at 10). `HodgkinHuxley.bounds` follow
    NaKL's convention (±50% around the conductances, ±5% around the others) and
    `state_bounds` are NaKL's.

    Hodgkin & Huxley (1952), *A quantitative description of membrane current and its
    application to conduction and excitation in nerve*, J. Physiol. 117:500–544.

    **Arguments:**

    - `gNa`, `gK`, `gL`: the maximal conductances (120, 36, 0.3 mS/cm²).
    - `ENa`, `EK`, `EL`: the reversal potentials (50, −77, −54.387 mV).
    - `C`: the membrane capacitance (1 µF/cm²).
    """

    gNa: Float[ArrayLike, ""] = 120.0
    gK: Float[ArrayLike, ""] = 36.0
    gL: Float[ArrayLike, ""] = 0.3
    ENa: Float[ArrayLike, ""] = 50.0
    EK: Float[ArrayLike, ""] = -77.0
    EL: Float[ArrayLike, ""] = -54.387
    C: Float[ArrayLike, ""] = 1.0

    def __call__(
        self, t: ArrayLike, x: Float[Array, " 4"], u: Float[Array, " 1"]
    ) -> Float[Array, " 4"]:
        del t
        v, m, h, n = x[0], x[1], x[2], x[3]
        am, bm, ah, bh, an, bn = hodgkin_huxley_rates(v)
        current = (
            self.gNa * m**3 * h * (self.ENa - v)
            + self.gK * n**4 * (self.EK - v)
            + self.gL * (self.EL - v)
            + u[0]
        )
        return jnp.stack(
            [
                current / self.C,
                am * (1 - m) - bm * m,
                ah * (1 - h) - bh * h,
                an * (1 - n) - bn * n,
            ]
        )

    def check_dim(self, dim: int) -> None:
        _check_four("HodgkinHuxley", dim)


HodgkinHuxley.bounds = _boxes(HodgkinHuxley, ("gNa", "gK", "gL"))
HodgkinHuxley.state_bounds = _STATE_BOUNDS
