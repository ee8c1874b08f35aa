"""Discretisations of the model term: the residual x(n+1) − x(n) − Δ(x(n), x(n+1), θ) of
each interval, one Module per scheme."""

import abc
from collections.abc import Callable, Mapping
from typing import ClassVar

import equinox as eqx
import jax
from jaxtyping import Array, Float

from .._misc import deprecated_alias, did_you_mean


class AbstractDiscretisation(eqx.Module):
    """A discretisation of dx/dt = F(t, x, θ) on the model grid, as residuals per interval.

    Subclasses provide `name` (the string [`deepest.Assimilation`][] accepts for it),
    `has_midpoints` (whether each interval's midpoint state is an unknown too), `order`
    (the order at which the discrete minimiser converges to the continuous one, with
    [`deepest.discrete_weights`][]) and `residuals`; `explicit` (default False) says that
    the residual is x(n+1) − Φ(x(n)): the next state is the guess minus the residual at it,
    with no Newton iteration.
    """

    name: ClassVar[str]
    has_midpoints: ClassVar[bool]
    order: ClassVar[int]
    explicit: ClassVar[bool] = False

    @abc.abstractmethod
    def residuals(
        self,
        field: Callable,
        ts: Float[Array, " n"],
        path: Float[Array, "n dim"],
        theta: Mapping[str, Array],
        midpoints: Float[Array, "n-1 dim"] | None = None,
    ) -> tuple[Float[Array, "n-1 dim"], ...]:
        """The residuals of every interval (one array, or two with midpoints). With a
        time-dependent field F(t, x, θ) every call of `field` gets a scalar time."""


def _vfield(field):
    return jax.vmap(field, in_axes=(0, 0, None))


class Euler(AbstractDiscretisation):
    """Forward Euler: Δ = h F(t_n, x_n). Order 1."""

    name: ClassVar[str] = "euler"
    has_midpoints: ClassVar[bool] = False
    order: ClassVar[int] = 1
    explicit: ClassVar[bool] = True

    def residuals(self, field, ts, path, theta, midpoints=None):
        h = (ts[1:] - ts[:-1])[:, None]
        x0, x1 = path[:-1], path[1:]
        return (x1 - x0 - h * _vfield(field)(ts[:-1], x0, theta),)


class Trapezoid(AbstractDiscretisation):
    """The trapezoidal rule: Δ = h/2 (F(t_n, x_n) + F(t_{n+1}, x_{n+1})). Order 2."""

    name: ClassVar[str] = "trapezoid"
    has_midpoints: ClassVar[bool] = False
    order: ClassVar[int] = 2

    def residuals(self, field, ts, path, theta, midpoints=None):
        h = (ts[1:] - ts[:-1])[:, None]
        f = _vfield(field)(ts, path, theta)
        return (path[1:] - path[:-1] - h / 2 * (f[:-1] + f[1:]),)


def _rk4_step(field, t, x, h, theta):
    k1 = field(t, x, theta)
    k2 = field(t + h / 2, x + h / 2 * k1, theta)
    k3 = field(t + h / 2, x + h / 2 * k2, theta)
    k4 = field(t + h, x + h * k3, theta)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


class RK4(AbstractDiscretisation):
    """The classical Runge–Kutta step as a forward map: Δ = RK4(x_n) − x_n. Order 1."""

    name: ClassVar[str] = "rk4"
    has_midpoints: ClassVar[bool] = False
    order: ClassVar[int] = 1
    explicit: ClassVar[bool] = True

    def residuals(self, field, ts, path, theta, midpoints=None):
        # the step sizes enter scalar per interval, so the stage times t + h/2 are scalars
        hs = ts[1:] - ts[:-1]
        step = jax.vmap(_rk4_step, in_axes=(None, 0, 0, 0, None))
        return (path[1:] - step(field, ts[:-1], path[:-1], hs, theta),)


class SimpsonHermite(AbstractDiscretisation):
    """Simpson–Hermite (varanneal's form), with the midpoint states x_m as unknowns: the
    Simpson residual x_{n+1} − x_n − h/6 (F_n + 4F_m + F_{n+1}) and the Hermite midpoint
    residual x_m − (x_n + x_{n+1})/2 − h/8 (F_n − F_{n+1}). Order 2."""

    name: ClassVar[str] = "simpson_hermite"
    has_midpoints: ClassVar[bool] = True
    order: ClassVar[int] = 2

    def residuals(self, field, ts, path, theta, midpoints=None):
        vfield = _vfield(field)
        h = (ts[1:] - ts[:-1])[:, None]
        x0, x1 = path[:-1], path[1:]
        f = vfield(ts, path, theta)
        f0, f1 = f[:-1], f[1:]
        fm = vfield((ts[:-1] + ts[1:]) / 2, midpoints, theta)
        simpson = x1 - x0 - h / 6 * (f0 + 4 * fm + f1)
        hermite = midpoints - (x0 + x1) / 2 - h / 8 * (f0 - f1)
        return simpson, hermite


# Gauss–Legendre points 1/2 ± √3/6 of [0, 1] (each of weight 1/2).
_GAUSS_OFFSET = 3.0**0.5 / 6


class GaussLegendre(AbstractDiscretisation):
    """Two-stage Gauss–Legendre collocation, with the midpoint states x_m as unknowns: the
    path on each interval is the quadratic through x_n, x_m, x_{n+1}, and the residuals
    are √(1/2)·h·(ẋ − F) at the two Gauss–Legendre points t_n + (1/2 ± √3/6) h, so that
    Σ|r|² is Gauss quadrature of h ∫ |ẋ − F|² dt. All residuals zero is the 2-stage
    Gauss–Legendre collocation step. Order 4."""

    name: ClassVar[str] = "gauss_legendre"
    has_midpoints: ClassVar[bool] = True
    order: ClassVar[int] = 4

    def residuals(self, field, ts, path, theta, midpoints=None):
        # quadratic through (0, x0), (1/2, xm), (1, x1) at s = 1/2 ± d: its value
        # (x0 + x1)/6 + 2 xm/3 ± d (x1 − x0) and its h-scaled slope (x1 − x0) ± 4d (x0 − 2 xm + x1)
        vfield = _vfield(field)
        hs = ts[1:] - ts[:-1]
        h = hs[:, None]
        x0, x1, xm = path[:-1], path[1:], midpoints
        d = _GAUSS_OFFSET
        mean, diff, curve = (x0 + x1) / 6 + 2 * xm / 3, x1 - x0, x0 - 2 * xm + x1
        out = []
        for sign in (-1.0, 1.0):
            t = ts[:-1] + (0.5 + sign * d) * hs
            x = mean + sign * d * diff
            slope = diff + sign * 4 * d * curve
            out.append(0.5**0.5 * (slope - h * vfield(t, x, theta)))
        return tuple(out)


DISCRETISATIONS: tuple[AbstractDiscretisation, ...] = (
    Euler(),
    Trapezoid(),
    RK4(),
    SimpsonHermite(),
    GaussLegendre(),
)


def as_discretisation(discretisation: str | AbstractDiscretisation) -> AbstractDiscretisation:
    """A discretisation Module from itself or its name ("euler", "trapezoid", "rk4",
    "simpson_hermite", "gauss_legendre")."""
    if isinstance(discretisation, AbstractDiscretisation):
        return discretisation
    by_name = {d.name: d for d in DISCRETISATIONS}
    try:
        return by_name[discretisation]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown discretisation {discretisation!r}; use one of {tuple(by_name)}, or an "
            f"AbstractDiscretisation.{did_you_mean(discretisation, by_name)}"
        ) from None


# the American spellings, deprecated, each with its warning
_RENAMES = {
    "AbstractDiscretization": (
        "deepest.discretisations.AbstractDiscretisation",
        AbstractDiscretisation,
    ),
    "DISCRETIZATIONS": ("deepest.discretisations.DISCRETISATIONS", DISCRETISATIONS),
    "as_discretization": ("deepest.discretisations.as_discretisation", as_discretisation),
}


def __getattr__(name):
    return deprecated_alias(__name__, name, _RENAMES)
