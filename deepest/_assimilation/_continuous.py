r"""Data assimilation in continuous time: the action, its canonical equations and gradients.

The action of a path x(t) on [t_0, t_1] given measurements y_k of components H at times τ_k,

    A = ∫ (R_f/2) |ẋ − F(t, x)|² dt + (R_m/2) Σ_k |H x(τ_k) − y_k|²,

is stationary where, with the canonical momentum p = R_f (ẋ − F) and the Hamiltonian
𝓗 = p·F + |p|²/(2 R_f),

    ẋ = F + p/R_f,   ṗ = −(∂F/∂x)ᵀ p,
    p(t_0) = R_m Hᵀ(H x(t_0) − y_0),   p(t_1) = −R_m Hᵀ(H x(t_1) − y_N),
    p(τ_k⁺) = p(τ_k⁻) + R_m Hᵀ(H x(τ_k) − y_k)   at interior measurements.

(Derivation: δA = ∫ p·(δẋ − ∂F/∂x δx) dt + Σ_k R_m (Hx − y_k)·H δx(τ_k); integrating p·δẋ
by parts on each interval between measurements leaves −ṗ − (∂F/∂x)ᵀp in the integral and
the boundary terms p(τ⁻)·δx − p(τ⁺)·δx + R_m Hᵀ(Hx − y)·δx at each τ, with p(t_0⁻) =
p(t_1⁺) = 0: all must vanish.) At a stationary path the envelope theorem gives the
gradient of the minimised action with respect to weights W of F: dA/dW = −∫ (∂F/∂W)ᵀ p dt.
"""

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PyTree, Scalar

from .._annealing import unnormalised_scale
from .._boundary_value import AbstractAnnealableBoundaryValueProblem, TPBVPSolution
from .._data import Observations, check_dimension, concrete
from .._misc import renamed_keywords
from .._networks import FitHistory
from ..models import check_field, parametrised
from ._checks import check_rm, check_weight


class ContinuousAssimilation(AbstractAnnealableBoundaryValueProblem):
    """The continuous-time assimilation action of a model given observations, as a TPBVP.

    The problem lives on [t_0, t_1] = [first, last observation time]; the observations at
    both ends give the boundary conditions, those in between the jumps of p (see the module
    docstring for the equations). A network is the case of two observation times (input
    layer at t_0, output layer at t_1). Solve it with [`deepest.solve_tpbvp`][].

    **Arguments:**

    - `model`: an [`deepest.models.AbstractModel`][], any Equinox module `F(t, x)` (e.g. a
      continuous network's field), a callable `F(t, x)`, or a callable `F(t, x, params)`
      with `params`.
    - `data`: the [`deepest.Observations`][] (any increasing times, masks allowed).
    - `rm`: the measurement weight R_m > 0 (scalar or one per observed component).
    - `rf`: the model weight R_f > 0 (scalar).
    - `dim`: the state dimension D (default: from `data.truth`, else the number of observed
      components if they are 0..L−1).
    - `params`: parameter values for a callable model.
    - `fixed_start`: hold the measured components of x(t_0) at the data as hard constraints
      (a network's input) instead of weighting them by R_m.

    **Example:**

        data = deepest.twin_experiment(deepest.models.Lorenz63(), 3, 11, 0.05, (0,), 0.1, key)
        problem = deepest.ContinuousAssimilation(deepest.models.Lorenz63(), data, 100.0, 10.0)
        sol = deepest.solve_tpbvp(problem)
    """

    field: Callable
    times: Float[Array, " n_obs"]
    values: Float[Array, "n_obs n_observed"]
    weights: Float[Array, "n_obs n_observed"]
    rm: Float[Array, "*n_observed"]
    rf: Float[Array, ""]
    observed: tuple[int, ...] = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    fixed_start: bool = eqx.field(static=True)

    def __init__(
        self,
        model,
        data: Observations,
        rm: ArrayLike,
        rf: ArrayLike,
        *,
        dim: int | None = None,
        params: Mapping[str, ArrayLike] | None = None,
        fixed_start: bool = False,
    ):
        if not isinstance(data, Observations):
            raise TypeError(f"`data` must be deepest.Observations; got {type(data).__name__}.")
        if dim is None:
            if data.truth is not None:
                dim = data.truth.shape[1]
            elif data.observed == tuple(range(len(data.observed))):
                dim = len(data.observed)
            else:
                raise ValueError("Pass `dim`: it cannot be read from the data.")
        dim = check_dimension(model, data.observed, dim)
        times = concrete(data.times)
        if times is not None and not times[-1] > times[0]:
            raise ValueError("The observation times must span an interval T > 0.")
        dtype = jnp.result_type(float)
        rm = check_rm(rm, data)
        rf = check_weight(rf, "rf", ((),), "a scalar")
        field, _ = parametrised(model, params)
        check_field(field, dim, dtype)
        weights = (
            jnp.ones(data.values.shape, dtype)
            if data.mask is None
            else jnp.asarray(data.mask, dtype)
        )
        self.field = field
        self.times = jnp.asarray(data.times, dtype)
        # a masked entry may hold NaN: zero it rather than multiply it by its zero weight
        self.values = jnp.where(weights > 0, jnp.asarray(data.values, dtype), 0)
        self.weights = weights
        self.rm = rm
        self.rf = rf
        self.observed = data.observed
        self.dim = dim
        self.fixed_start = bool(fixed_start)

    # -- the model and its mechanics -----------------------------------------------------
    def model(self, t, x: Float[Array, " dim"]) -> Float[Array, " dim"]:
        """The model vector field F(t, x)."""
        return self.field(t, x, {})

    def vector_field(self, t, y, args=None):
        """The canonical equations ẋ = F + p/R_f, ṗ = −(∂F/∂x)ᵀ p."""
        del args
        x, p = y
        f, vjp = jax.vjp(lambda x_: self.model(t, x_), x)
        return f + p / self.rf, -vjp(p)[0]

    def hamiltonian(self, t, x, p) -> Scalar:
        """𝓗 = p·F(t, x) + |p|²/(2 R_f)."""
        return jnp.dot(p, self.model(t, x)) + jnp.sum(p**2) / (2 * self.rf)

    def misfit_force(self, k, x: Float[Array, " dim"]) -> Float[Array, " dim"]:
        """R_m Hᵀ(H x − y_k): the jump of p at observation `k` (masked entries excluded)."""
        obs = jnp.asarray(self.observed)
        residual = self.weights[k] * (x[obs] - self.values[k])
        return jnp.zeros_like(x).at[obs].add(self.rm * residual)

    # -- the boundary-value problem ------------------------------------------------------
    def node_times(self):
        return self.times

    def jump(self, k, y):
        x, p = y
        return x, p + self.misfit_force(k, x)

    def boundary_residual(self, y0, y1):
        (x0, p0), (x1, p1) = y0, y1
        if self.fixed_start:
            obs = jnp.asarray(self.observed)
            held = jnp.zeros(self.dim, x0.dtype).at[obs].set(self.weights[0]) > 0
            target = jnp.zeros_like(x0).at[obs].set(self.values[0])
            start = jnp.where(held, x0 - target, p0)
        else:
            start = p0 - self.misfit_force(0, x0)
        end = p1 + self.misfit_force(self.times.shape[0] - 1, x1)
        return jnp.concatenate([start, end])

    def initial_guess(self, t):
        """x: the observed components interpolated linearly in time, zero elsewhere; p = 0."""
        t = jnp.asarray(t, self.times.dtype)
        obs = jax.vmap(jnp.interp, in_axes=(None, None, 1))(t, self.times, self.values)
        x = jnp.zeros(self.dim, self.values.dtype).at[jnp.asarray(self.observed)].set(obs)
        return x, jnp.zeros_like(x)

    # -- the action and its gradient -----------------------------------------------------
    def measurement_error(self, sol: TPBVPSolution) -> Scalar:
        """(R_m/2) Σ_k |H x(τ_k) − y_k|² along a solution (masked entries excluded)."""
        xs = jax.vmap(lambda t: sol.evaluate(t)[0])(self.times)
        residual = self.weights * (xs[:, jnp.asarray(self.observed)] - self.values)
        return 0.5 * jnp.sum(jnp.broadcast_to(self.rm, residual.shape) * residual**2)

    def action(self, sol: TPBVPSolution) -> Scalar:
        """The action A of the solution's path.

        On a solution of the canonical equations ẋ − F = p/R_f, so the model term is
        ∫ |p|²/(2 R_f) dt (Gauss–Legendre quadrature of the dense output).
        """
        model_term = sol.quadrature(lambda t, x, p: jnp.sum(p**2) / (2 * self.rf))
        return model_term + self.measurement_error(sol)

    def weight_gradient(self, sol: TPBVPSolution) -> PyTree[Array]:
        """The envelope-theorem gradient dA/dW = −∫ (∂F/∂W)ᵀ p dt of the minimised action.

        W are the floating-point arrays of the model (for a callable model: of `params`).
        Valid at a converged solution (where A is stationary in the path).

        **Returns:** a pytree shaped like the model (the `params` dict for a callable model),
        with the gradients in its array leaves and `None` elsewhere.
        """
        dynamic, static = eqx.partition(self.field, eqx.is_inexact_array)

        def integrand(t, x, p):
            _, vjp = jax.vjp(lambda d: eqx.combine(d, static)(t, x, {}), dynamic)
            return jax.tree.map(jnp.negative, vjp(p)[0])

        grads = sol.quadrature(integrand)
        return grads.parameters()


def discrete_weights(
    rf: ArrayLike, rm: ArrayLike, *, dim: int, t1: float, n_steps: int, n_measured: int
) -> tuple[Array, Array]:
    r"""The weights (R_f, R_m) of a discrete action that approximates a continuous one.

    [`deepest.Assimilation`][] (and the layered networks' action) normalise per term,
    R_m/(L·N_obs) Σ (x_obs − y)² + R_f/(D·(N_model − 1)) Σ |x_{n+1} − x_n − h·F|². With a
    layer/step map x + h·F on N_model − 1 = T/h steps, Σ_n h (R_f^c/2)|(x_{n+1} − x_n)/h − F|²
    is the Riemann sum of the continuous model term, so the two actions agree when

        R_f^disc = R_f^cont · D · T / (2 h²),   R_m^disc = R_m^cont · n_measured / 2,

    with n_measured = L·N_obs the number of measured entries (with a mask, the number of
    `True` entries, which is what `Assimilation` divides by). Without this scaling a finer
    discretisation weakens the model term ∝ h².

    **Arguments:**

    - `rf`, `rm`: the continuous weights R_f^cont, R_m^cont.
    - `dim`: the state dimension D.
    - `t1`: the time span T.
    - `n_steps`: the number of steps (layers) L = T/h.
    - `n_measured`: the number of measured entries L_obs·N_obs.

    **Returns:** `(rf_disc, rm_disc)`.
    """
    if n_steps < 1 or not t1 > 0 or n_measured < 1:
        raise ValueError("discrete_weights needs n_steps ≥ 1, t1 > 0 and n_measured ≥ 1.")
    h = t1 / n_steps
    # each term of the normalised action divides its weight by its count n; the continuous
    # action weights each squared residual by R/2 (the model's by R_f/(2h), a Riemann sum
    # with residuals h·(ẋ − F)): the ratio is the count over 2, for n_f = D·L model entries
    rf_disc = jnp.asarray(rf) * unnormalised_scale(dim * n_steps) / h
    rm_disc = jnp.asarray(rm) * unnormalised_scale(n_measured)
    return rf_disc, rm_disc


@renamed_keywords(n_layers="n_steps")
def residual_network(field: Callable, t1: float, n_steps: int):
    """The residual network of `n_steps` = L layer maps x ↦ x + h·F(x) (h = `t1`/L, one
    forward-Euler step each) discretising `dx/dt = F(x)` on [0, `t1`].

    Returns a [`deepest.LayeredNetwork`][] whose layers all share the continuous field's
    weights (an autonomous field, called as `field(x)` or `field(t, x)` at t = 0); with
    [`deepest.discrete_weights`][] its discrete action approximates the continuous one, and
    as L grows its minimiser converges to the TPBVP solution at the order of the layer map
    (1 for this forward-Euler map).
    """
    from .._continuous import TimeField, takes_time
    from .._networks import LayeredNetwork

    if n_steps < 1 or not t1 > 0:
        raise ValueError("residual_network needs n_steps ≥ 1 and t1 > 0.")
    layer = _AutonomousLayer(TimeField(field, takes_time(field)))
    return LayeredNetwork(layers=[layer] * n_steps, residual_step=t1 / n_steps)


class _AutonomousLayer(eqx.Module):
    """F(0, x) as a layer of x alone."""

    field: eqx.Module

    def __call__(self, x):
        return self.field(jnp.zeros((), x.dtype), x)


def train_continuous(
    field: eqx.Module,
    inputs: Float[ArrayLike, "n_pairs dim"],
    targets: Float[ArrayLike, "n_pairs dim"],
    *,
    t1: float,
    rm: float,
    rf: float,
    optimiser: optax.GradientTransformation,
    steps: int,
    method=None,
    fixed_start: bool = True,
) -> tuple[eqx.Module, FitHistory]:
    """Train a continuous-layer field on M input/output pairs by the boundary-value problem.

    For fixed weights W, each pair (x_in, y_out) defines the continuous action with
    measurements at t = 0 (the input; a hard constraint with `fixed_start`) and t = T (the
    output). The TPBVP of every pair is solved (vmapped); the weight gradient of the summed
    minimised actions is the envelope formula −Σ_pairs ∫ (∂F/∂W)ᵀ p dt accumulated along
    each solution; an optax optimiser updates W. Its `optimiser`, `steps` and return value
    are those of [`deepest.fit`][].

    **Arguments:**

    - `field`: an Equinox module `F(t, x)` (the weights are its floating-point arrays).
    - `inputs`, `targets`: (M, D) arrays of pairs (state dimension D).
    - `t1`: the depth T of the continuous network.
    - `rm`, `rf`: the continuous weights R_m, R_f.
    - `optimiser`: an optax gradient transformation, e.g. `optax.adam(1e-2)`.
    - `steps`: the number of updates.
    - `method`: the TPBVP method (default [`deepest.MultipleShooting`][]).
    - `fixed_start`: hold x(0) at the input (default) or weight it by R_m.

    **Returns:** `(trained field, history)`, the history a [`deepest.FitHistory`][] whose
    `train_loss` is the summed minimised action before each update (no validation).
    """
    from .._boundary_value import MultipleShooting, solve_tpbvp

    if not (hasattr(optimiser, "init") and hasattr(optimiser, "update")):
        raise TypeError(f"`optimiser` must be an optax GradientTransformation; got {optimiser!r}.")
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"`steps` must be non-negative; got {steps}.")
    inputs = jnp.asarray(inputs)
    targets = jnp.asarray(targets)
    if inputs.ndim != 2 or inputs.shape != targets.shape:
        raise ValueError(
            f"`inputs` and `targets` must both be (n_pairs, dim); got {inputs.shape} and "
            f"{targets.shape}."
        )
    dim = inputs.shape[1]
    method = MultipleShooting() if method is None else method
    data = Observations([0.0, t1], np.stack([inputs[0], targets[0]]), range(dim))
    template = ContinuousAssimilation(field, data, rm, rf, dim=dim, fixed_start=fixed_start)
    values = jnp.stack([inputs, targets], axis=1)

    def problem_of(f, v):
        problem = eqx.tree_at(lambda p: p.values, template, v)
        return eqx.tree_at(lambda p: p.field.model, problem, f)

    def pair(f, v):
        problem = problem_of(f, v)
        sol = solve_tpbvp(problem, method, throw=False)
        # A pair whose Newton solve failed contributes nothing rather than garbage.
        ok = sol.converged
        grad = jax.tree.map(lambda g: jnp.where(ok, g, 0), problem.weight_gradient(sol))
        return jnp.where(ok, problem.action(sol), jnp.nan), grad

    @eqx.filter_jit
    def step(f, opt_state):
        params = eqx.filter(f, eqx.is_inexact_array)
        actions, grads = jax.vmap(lambda v: pair(f, v))(values)
        grads = jax.tree.map(lambda g: jnp.sum(g, axis=0), grads)
        # optax mixes its int32 step count with floats (e.g. Adam's b1**count).
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimiser.update(grads, opt_state, params)
        return eqx.apply_updates(f, updates), opt_state, jnp.sum(actions)

    opt_state = optimiser.init(eqx.filter(field, eqx.is_inexact_array))
    losses = []
    for _ in range(steps):
        field, opt_state, loss = step(field, opt_state)
        losses.append(loss)
    dtype = jnp.result_type(float)
    history = FitHistory(
        jnp.stack(losses) if losses else jnp.zeros((0,), dtype),
        jnp.zeros((0,), dtype=int),
        jnp.zeros((0,), dtype),
    )
    return field, history
