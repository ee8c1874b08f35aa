"""The data-assimilation action for a model observed at some times in some components."""

from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Scalar

from .._annealing import AbstractBandedProblem, Block
from .._data import (
    Inputs,
    Observations,
    check_dimension,
    check_equal_spacing,
    concrete,
    integrate,
)
from .._misc import renamed_keywords
from ..models import check_estimate, check_field, parametrised
from ._background import Background
from ._checks import (
    check_box,
    check_inputs,
    check_interval,
    check_rm,
    check_uses_input,
    component_boxes,
    cut_range,
    state_draw_ranges,
)
from ._discretisation import AbstractDiscretisation, as_discretisation


class Assimilation(AbstractBandedProblem):
    r"""Estimate a model's path and parameters from noisy partial observations.

    The action (varanneal's per-term normalisation) is

    $$A(X, θ; R_f) = \frac{R_m}{L N_\text{obs}} \sum_{n,l} (x_l(t_n) − y_l(t_n))^2
      + \frac{R_f}{D (N_\text{model} − 1)} \sum_{n,a} (x_a(n+1) − x_a(n) − Δ_a)^2$$

    with Δ one step of `discretisation` (Simpson–Hermite adds a second, midpoint residual
    to the same sum; Gauss–Legendre has two residuals per step, see
    [`deepest.discretisations`][]).
    With `mask`ed data the first denominator counts measured entries. With R_m = 1/σ² the
    measurement term of a path consistent with the data is ≈ 1.

    A `background` N(x_b, B) (a [`deepest.Background`][]) adds the Gaussian prior
    ½(z − x_b)ᵀB⁻¹(z − x_b) on z = x₀ (or x₀ and θ) to the unnormalised action
    A₀ = (n_m/2)·A whatever R_f, with n_m = L·N_obs the first denominator; so to A it adds

    $$\frac{1}{L N_\text{obs}} (z − x_b)^\top B^{-1} (z − x_b),$$

    a block of weight 1 averaged over the measurement term's count, whose residuals
    L_B⁻¹(z − x_b) (B = L_B·L_Bᵀ) sit on the first node's banded row, so that the
    minimisers, their preconditioner, [`deepest.laplace`][] and [`deepest.pamc`][] see
    it. It does not depend on R_f, so it is counted in `measurement_error`.

    The model grid has `steps_per_obs` steps between observation times, so
    N_model = (N_obs − 1)·steps_per_obs + 1.

    **Arguments:**

    - `model`: an [`deepest.models.AbstractModel`][] or Equinox module called as
      `model(t, x)`, a callable `F(t, x)`, or a callable `F(t, x, params)` (then pass
      `params`); driven by `inputs`: an [`deepest.models.AbstractDrivenModel`][] or module
      called as `model(t, x, u)`, or a callable `F(t, x, params, u)`. Its output is checked
      once, without computing: dx/dt of shape (D,).
    - `data`: the [`deepest.Observations`][] (equally spaced times).
    - `rm`: the measurement weight R_m > 0, scalar or one per observed component.
    - `dim`: the number D of model components (default: from `data.truth`, else required).
    - `discretisation`: an [`deepest.discretisations.AbstractDiscretisation`][] or its
      name: "euler", "trapezoid" (default), "rk4", "simpson_hermite" or "gauss_legendre"
      (the last two with each interval's midpoint state as unknowns). With
      [`deepest.discrete_weights`][] the minimiser converges to the continuous action's
      minimiser (the TPBVP solution) at order 1 for "euler" and "rk4", 2 for "trapezoid"
      and "simpson_hermite", 4 for "gauss_legendre" (each Module's `order`).
    - `steps_per_obs`: model steps between consecutive observation times.
    - `estimate`: names of the parameters to estimate, e.g. `("forcing",)`.
    - `params`: parameter values for a callable model.
    - `state_range`: (low, high) of the uniform draws for unobserved components, or one
      pair per component (D pairs: V in mV beside gates in [0, 1]); each is cut to the
      component's `state_bounds`.
    - `param_ranges`: {name: (low, high)} uniform draws for estimated parameters (default:
      their `bounds`, else ±50% around the model's value; cut to the bounds).
    - `bounds`: {name: (low, high)} box constraints on estimated parameters (±inf for a
      side without one). The minimisers keep every iterate in the box with projected
      steps and an active set (as L-BFGS-B does), so an estimate leaves a bound when the
      gradient says so; results flag an estimate that ends on one.
    - `state_bounds`: box constraints on the states (and midpoints), one (low, high) per
      component, `None` for a free one, or {component: (low, high)}; e.g.
      `deepest.models.NaKL.state_bounds`. Observed components start at the data clipped
      into their box.
    - `inputs`: a [`deepest.Inputs`][] driving the model, for a model that takes one; the
      model then sees u(t) at every time the discretisation evaluates it (nodes,
      midpoints, stages; the samples themselves at the inputs' grid times). They must
      cover the window, and `forecast`/`predict` past it.
    - `background`: a [`deepest.Background`][] on the first state (its `mean` has D
      entries) or on the first state and the estimated parameters (D + p entries, θ
      flattened in `estimate` order); default none.
    - `discretization`: deprecated, the former spelling of `discretisation` (warns).

    **Example:**

        problem = deepest.Assimilation(deepest.models.Lorenz96(8.0), data, rm=1 / 0.4**2,
                                       estimate=("forcing",), param_ranges={"forcing": (6, 10)})
    """

    field: Callable
    values: dict[str, Array]
    data: Observations
    rm: Float[Array, "*n_observed"]
    dim: int = eqx.field(static=True)
    discretisation: AbstractDiscretisation
    steps_per_obs: int = eqx.field(static=True)
    estimate: tuple[str, ...] = eqx.field(static=True)
    param_ranges: tuple[tuple[str, float, float], ...] = eqx.field(static=True)
    parameter_box: tuple[tuple[str, float, float], ...] = eqx.field(static=True)
    state_ranges: tuple[tuple[float, float], ...] = eqx.field(static=True)
    state_box: tuple[tuple[float, float], ...] | None = eqx.field(static=True)
    background: Background | None
    inputs: Inputs | None

    @renamed_keywords(discretization="discretisation")
    def __init__(
        self,
        model,
        data: Observations,
        rm: ArrayLike,
        *,
        dim: int | None = None,
        discretisation: str | AbstractDiscretisation = "trapezoid",
        steps_per_obs: int = 1,
        estimate: Sequence[str] = (),
        params: Mapping[str, ArrayLike] | None = None,
        state_range: tuple[float, float] | Sequence[tuple[float, float]] = (-10.0, 10.0),
        param_ranges: Mapping[str, tuple[float, float]] | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        state_bounds: Sequence[tuple[float, float] | None]
        | Mapping[int, tuple[float, float]]
        | None = None,
        background: Background | None = None,
        inputs: Inputs | None = None,
    ):
        if not isinstance(data, Observations):
            raise TypeError(f"`data` must be deepest.Observations; got {type(data).__name__}.")
        if dim is None:
            if data.truth is None:
                raise ValueError("Pass `dim`: the data carry no `truth` to read it from.")
            dim = data.truth.shape[1]
        dim = check_dimension(model, data.observed, dim)
        discretisation = as_discretisation(discretisation)
        if int(steps_per_obs) != steps_per_obs or steps_per_obs < 1:
            raise ValueError(f"`steps_per_obs` must be a positive integer; got {steps_per_obs}.")
        times = concrete(data.times)
        if times is not None:
            check_equal_spacing(times, "Assimilation needs equally spaced observation times")
        rm = check_rm(rm, data)
        state_box = component_boxes("state_bounds", state_bounds, dim)
        state_ranges = state_draw_ranges(state_range, state_box, dim)
        field, values = parametrised(model, params)
        inputs = check_inputs(model, inputs, times)
        check_field(field, dim, jnp.result_type(float), None if inputs is None else inputs.n_inputs)
        for name in (estimate,) if isinstance(estimate, str) else estimate:
            held = getattr(model, name, None) if isinstance(model, eqx.Module) else None
            integer = isinstance(held, (int, np.integer)) and not isinstance(held, bool)
            if name not in values and integer:
                raise ValueError(
                    f"Cannot estimate {name!r}: the model holds it as the integer {held!r}, "
                    f"not a parameter; give it as a float ({float(held)!r})."
                )
        estimate = check_estimate(estimate, values)
        param_ranges = dict(param_ranges or {})
        bounds = dict(bounds or {})
        for where, table, check in (
            ("param_ranges", param_ranges, check_interval),
            ("bounds", bounds, check_box),
        ):
            for name, pair in table.items():
                if name not in estimate:
                    raise ValueError(f"`{where}` names {name!r}, which is not in `estimate`.")
                table[name] = check(f"{where}[{name!r}]", pair)
        ranges = []
        for name in estimate:
            box = bounds.get(name, (-np.inf, np.inf))
            if name in param_ranges:
                a, b = param_ranges[name]
            elif np.all(np.isfinite(box)):
                a, b = box
            else:
                value = concrete(values[name])
                if value is None:
                    raise ValueError(
                        f"The parameter {name!r} is traced, so its default range (±50% around "
                        f"its value) is unknown; pass `param_ranges[{name!r}]`."
                    )
                v = float(np.mean(value))
                a, b = sorted((0.5 * v, 1.5 * v)) if v != 0 else (-1.0, 1.0)
            a, b = cut_range(f"the starting range of {name!r}", (a, b), box, "`bounds`")
            ranges.append((name, float(a), float(b)))
        if background is not None:
            if not isinstance(background, Background):
                raise TypeError(
                    f"`background` must be a deepest.Background; got {type(background).__name__}."
                )
            n_params = sum(int(np.size(values[name])) for name in estimate)
            if background.size not in {dim, dim + n_params}:
                both = f" or on it and the estimated parameters ({dim + n_params})"
                raise ValueError(
                    f"`background` must be on the first state ({dim} entries)"
                    f"{both if n_params else ''}; its mean has {background.size}."
                )
        self.field = field
        self.values = values
        self.data = data
        self.rm = rm
        self.dim = dim
        self.discretisation = discretisation
        self.steps_per_obs = int(steps_per_obs)
        self.estimate = estimate
        self.param_ranges = tuple(ranges)
        self.parameter_box = tuple((n, float(a), float(b)) for n, (a, b) in bounds.items())
        self.state_ranges = state_ranges
        self.state_box = state_box
        self.background = background
        self.inputs = inputs
        if inputs is not None:
            check_uses_input(self)

    @property
    def discretization(self) -> AbstractDiscretisation:
        """Deprecated: the former spelling of `discretisation` (warns)."""
        import warnings

        warnings.warn(
            "`Assimilation.discretization` is deprecated; use `discretisation`.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.discretisation

    # -- grid ---------------------------------------------------------------------------
    @property
    def n_model(self) -> int:
        """The number of model times, (N_obs − 1)·steps_per_obs + 1."""
        return (self.data.n_times - 1) * self.steps_per_obs + 1

    @property
    def ts(self) -> Float[Array, " n_model"]:
        """The model times."""
        t = self.data.times
        frac = jnp.arange(self.steps_per_obs, dtype=t.dtype) / self.steps_per_obs
        inner = (t[:-1, None] + (t[1:] - t[:-1])[:, None] * frac[None, :]).reshape(-1)
        return jnp.concatenate([inner, t[-1:]])

    # -- unknowns -----------------------------------------------------------------------
    @property
    def parameter_bounds(self) -> dict[str, tuple[float, float]]:
        """{name: (low, high)} of the parameters given `bounds=`."""
        return {name: (low, high) for name, low, high in self.parameter_box}

    def bounds(self) -> tuple[PyTree[Array], PyTree[Array]] | None:
        """(lower, upper) of the unknowns: `state_bounds` on every node (and midpoint) of
        the path, `bounds` on the parameters, ±inf elsewhere; `None` without either."""
        if self.state_box is None and not self.parameter_box:
            return None
        dtype = self.data.values.dtype
        box = self.state_box or ((-np.inf, np.inf),) * self.dim
        boxes = dict(self._parameter_boxes())

        def side(i):
            row = jnp.asarray([b[i] for b in box], dtype)
            params = {
                name: jnp.full(jnp.shape(self.values[name]), boxes[name][i], dtype)
                for name in self.estimate
            }
            out = {"path": jnp.broadcast_to(row, (self.n_model, self.dim)), "params": params}
            if self.discretisation.has_midpoints:
                out["midpoints"] = jnp.broadcast_to(row, (self.n_model - 1, self.dim))
            return out

        return side(0), side(1)

    def _parameter_boxes(self):
        boxes = self.parameter_bounds
        return ((n, boxes.get(n, (-np.inf, np.inf))) for n in self.estimate)

    def vector_field(self, t: ArrayLike, x: Float[Array, " dim"], theta) -> Float[Array, " dim"]:
        """F(t, x, θ) of the model, with the driving input u(t) where there are `inputs`
        (θ a dict of the parameters being estimated)."""
        if self.inputs is None:
            return self.field(t, x, theta)
        return self.field(t, x, theta, self.inputs(t))

    def model_sensitivity(self, unknowns: PyTree[Array]) -> Array:
        """max |wᵀ·∂f/∂x| over the model times of one path, f the model's vector field at
        the path's parameters and w a fixed random direction (reverse mode, as the
        minimisers' gradients: a model with a `jax.custom_vjp` has no forward mode)."""
        theta = self.parameters(unknowns)
        theta = {name: theta[name] for name in self.estimate}
        path = unknowns["path"]
        w = jr.normal(jr.key(0), path.shape[1:], path.dtype)

        def derivative(t, x):
            return jax.grad(lambda x: jnp.vdot(w, self.vector_field(t, x, theta)))(x)

        return jnp.max(jnp.abs(jax.vmap(derivative)(self.ts, path)))

    def parameters(self, unknowns: PyTree[Array]) -> dict[str, Array]:
        """The estimated parameters θ of `unknowns`."""
        return dict(unknowns["params"])

    def init(self, key: PRNGKeyArray) -> PyTree[Array]:
        """Observed components at the data (linearly interpolated between observation
        times; unmeasured entries drawn; clipped into `state_bounds`), the rest uniform in
        their `state_range`, estimated parameters uniform in `param_ranges`, midpoints
        halfway between their nodes: all inside the boxes."""
        kx, kp = jr.split(key)
        dtype = self.data.values.dtype
        lo, hi = (jnp.asarray(side, dtype)[None] for side in zip(*self.state_ranges))
        path = jr.uniform(kx, (self.n_model, self.dim), dtype, lo, hi)
        ts = self.ts
        obs = jax.vmap(jnp.interp, in_axes=(None, None, 1), out_axes=1)(
            ts, self.data.times, self.data.values
        )
        if self.data.mask is not None:
            measured = jnp.repeat(self.data.mask, self.steps_per_obs, axis=0)[: self.n_model]
            obs = jnp.where(measured, obs, path[:, jnp.asarray(self.data.observed)])
        path = path.at[:, jnp.asarray(self.data.observed)].set(obs)
        if self.state_box is not None:
            path = jnp.clip(
                path, *(jnp.asarray(side, dtype)[None] for side in zip(*self.state_box))
            )
        params = {}
        keys = jr.split(kp, max(len(self.param_ranges), 1))
        for k, (name, a, b) in zip(keys, self.param_ranges):
            params[name] = jr.uniform(k, jnp.shape(self.values[name]), dtype, a, b)
        unknowns = {"path": path, "params": params}
        if self.discretisation.has_midpoints:
            unknowns["midpoints"] = (path[:-1] + path[1:]) / 2
        return unknowns

    # -- the action ---------------------------------------------------------------------
    def _misfit(self, unknowns: PyTree[Array]) -> Float[Array, "n_obs n_observed"]:
        """x_l(t_n) − y_l(t_n), zero where the data are masked."""
        x = unknowns["path"][:: self.steps_per_obs][:, jnp.asarray(self.data.observed)]
        mask = self.data.mask
        if mask is None:
            return x - self.data.values
        # both `where`s: a masked entry may hold NaN, which must reach neither value nor grad
        return jnp.where(mask, x - jnp.where(mask, self.data.values, 0), 0)

    def _model_residuals(self, unknowns: PyTree[Array]) -> tuple[Array, ...]:
        theta = {**self.values, **self.parameters(unknowns)}
        theta = {n: theta[n] for n in self.estimate}
        return self.discretisation.residuals(
            self.vector_field,
            self.ts,
            unknowns["path"],
            theta,
            unknowns.get("midpoints"),
        )

    def _background_residuals(self, unknowns: PyTree[Array]) -> Float[Array, "1 n"]:
        """L_B⁻¹(z − x_b) of the background, z = x₀ or (x₀, θ), as one node row."""
        z = unknowns["path"][0]
        if self.background.size > self.dim:
            theta = self.parameters(unknowns)
            z = jnp.concatenate([z] + [jnp.ravel(theta[name]) for name in self.estimate])
        return self.background.whiten(z)[None]

    def residual_blocks(self) -> tuple[Block, ...]:
        """The misfit at the observation times (weight R_m, averaged over the measured
        entries, node rows every `steps_per_obs`) and the model residuals of every interval
        (weight R_f, averaged over D·(N_model − 1), interval rows; Simpson–Hermite and
        Gauss–Legendre's two residuals side by side); with a `background`, its whitened
        residuals L_B⁻¹(z − x_b) (weight 1, averaged over the measured entries too, so that
        A₀ gains exactly ½(z − x_b)ᵀB⁻¹(z − x_b); on the first node's row only)."""
        mask = self.data.mask
        n_m = self.data.values.size if mask is None else jnp.sum(mask, dtype=self.rm.dtype)
        blocks = (
            Block(self._misfit, n_m, self.rm, layout="node", stride=self.steps_per_obs),
            Block(
                self._model_residuals,
                self.dim * (self.n_model - 1),
                term="model",
                layout="interval",
            ),
        )
        if self.background is None:
            return blocks
        # a stride of N_model puts the block's one row on node 0 alone
        return blocks + (
            Block(self._background_residuals, n_m, layout="node", stride=self.n_model),
        )

    def model_term(self, unknowns: PyTree[Array], rf: ArrayLike) -> Scalar:
        """R_f/(D·(N_model − 1)) Σ residual², with `rf` scalar or per component (D,)."""
        return self._block_sum(unknowns, rf, ("model",))

    @property
    def action_counts(self) -> tuple[ArrayLike, int]:
        """(measured entries, D·(N_model − 1)): the action's two denominators, so that
        A₀ = (R_m/2)Σ(x_obs − y)² + (R_f·n_m/n_f)/2·Σ residual² (see
        [`deepest.AbstractProblem.unnormalised_action`][])."""
        return super().action_counts

    # -- banded residuals (for deepest.LevenbergMarquardt) ----------------------------
    @property
    def banded_shape(self) -> tuple[int, int, int]:
        width = 2 * self.dim if self.discretisation.has_midpoints else self.dim
        n_params = sum(int(np.size(self.values[name])) for name in self.estimate)
        return self.n_model, width, n_params

    def to_banded(self, unknowns: PyTree[Array]) -> tuple[Array, Array]:
        """States (N_model, D), or (N_model, 2D) with each interval's midpoint beside its
        first node (the last row's midpoint slot is padding, zero), and the estimated
        parameters flattened in `estimate` order."""
        states = unknowns["path"]
        if self.discretisation.has_midpoints:
            mid = jnp.concatenate([unknowns["midpoints"], jnp.zeros_like(states[:1])])
            states = jnp.concatenate([states, mid], axis=1)
        flat = [jnp.ravel(unknowns["params"][name]) for name in self.estimate]
        params = jnp.concatenate(flat) if flat else jnp.zeros((0,), states.dtype)
        return states, params

    def from_banded(self, states: Array, params: Array) -> PyTree[Array]:
        out, start = {}, 0
        for name in self.estimate:
            shape = jnp.shape(self.values[name])
            size = int(np.prod(shape, dtype=int))
            out[name] = params[start : start + size].reshape(shape)
            start += size
        unknowns = {"path": states[:, : self.dim], "params": out}
        if self.discretisation.has_midpoints:
            unknowns["midpoints"] = states[:-1, self.dim :]
        return unknowns

    def check_rf(self, rf: ArrayLike) -> None:
        if np.shape(rf) not in ((), (self.dim,)):
            raise ValueError(
                f"`rf0` must be a scalar or one value per model component ({self.dim}); "
                f"got shape {np.shape(rf)}."
            )

    @property
    def expected_action(self) -> float | None:
        """R_m·σ² averaged over observed components, when the noise σ is known."""
        if self.data.noise is None:
            return None
        return float(np.mean(np.asarray(self.rm) * np.asarray(self.data.noise) ** 2))

    def views(self, unknowns: PyTree[Array]) -> dict[str, Array]:
        """`paths` (n_paths, N_model, D) and `params` {name: (n_paths, …)}."""
        return {"paths": unknowns["path"], "params": jax.vmap(self.parameters)(unknowns)}

    def uncertainty_views(self, unknowns: PyTree[Array], std: PyTree[Array]) -> dict[str, Array]:
        """`paths_std` (n_paths, N_model, D) and `params_std` {name: (n_paths, …)}."""
        return {"paths_std": std["path"], "params_std": dict(std["params"])}

    @renamed_keywords(t_end="t1")
    def forecast(
        self, unknowns: PyTree[Array], t1: float, n_times: int = 200
    ) -> tuple[Float[Array, " n"], Float[Array, "n dim"]]:
        """Integrate one path's final state with its estimated parameters to the end time
        `t1`, the `inputs` continuing (they must cover the prediction).

        Vmap it over paths inside a program that closes over the problem (its times are
        read as numbers to check `t1`)."""
        ts = self.ts
        end = float(np.asarray(self.data.times)[-1])
        if not t1 > end:
            raise ValueError(f"`t1` must lie after the window's end {end}.")
        if self.inputs is not None:
            self.inputs.check_covers(end, t1, "the prediction")
        theta = {n: v for n, v in self.parameters(unknowns).items() if n in self.estimate}
        times = jnp.linspace(ts[-1], t1, n_times)
        states = integrate(
            lambda t, x, _: self.vector_field(t, x, theta), unknowns["path"][-1], times, params={}
        )
        return times, states
