"""Continuous-layer networks dx/dt = F(t, x; θ), with exact costate gradients."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._networks import AbstractCostateNetwork
from ..integrators import ClassicalRK4
from ._adjoint import AbstractAdjoint, as_adjoint
from ._fields import TimeField, as_pieces, takes_time
from ._integration import Integration


class ContinuousNetwork(AbstractCostateNetwork):
    """A continuous-layer network: x ↦ decoder(x(T)) with dx/dt = F(t, x; θ), x(0) = encoder(x).

    The forward pass integrates from 0 to `t1` with `diffrax.diffeqsolve`. The gradient
    depends on `adjoint`, an [`deepest.AbstractAdjoint`][] (or its name):

    - `"autodiff"`, [`deepest.AutodiffAdjoint`][]: JAX differentiates through diffrax's
        steps (`diffrax.RecursiveCheckpointAdjoint`): the reference.
    - `"costate"`, [`deepest.CostateAdjoint`][]: the forward pass stores the step states
        only; the backward pass is the division-free symplectic partner sweep of the
        forward Runge--Kutta tableau (Sanz-Serna 2016), the exact gradient of the discrete
        forward pass: λ(T) = ∂C/∂x(T), λ_n = (∂x_{n+1}/∂x_n)ᵀ λ_{n+1},
        dC/dθ = Σ_n Σ_i (∂F/∂θ(X_i))ᵀ K̄_i. Adaptive steps are recorded and replayed.
    - `"reversible"`, [`deepest.ReversibleAdjoint`][]: the forward scheme is the
        reversible RK of McCallum & Foster (2024) around `solver`
        ([`deepest.integrators.ReversibleRK`][]); the backward pass rebuilds the states
        exactly, so its memory does not grow with `n_steps`.

    λ is the backprop costate; the action's canonical momentum is p = −λ.

    **Arguments:**

    - `field`: an Equinox module called as `field(t, x)` (a module of `x` alone, such as
        `eqx.nn.MLP`, is accepted), or a [`deepest.PiecewiseConstant`][].
    - `t1`: the final time T > 0.
    - `n_steps`: the number of equal steps (fixed stepping), or the initial step T/n_steps
        of an adaptive solve.
    - `solver`: an explicit RK diffrax solver (`diffrax.Euler`, `diffrax.Heun`,
        `deepest.integrators.ClassicalRK4` (default), `diffrax.Dopri5`, `diffrax.Tsit5`, ...);
        with `adjoint="reversible"` its base scheme, or a `ReversibleRK`.
    - `adjoint`: an [`deepest.AbstractAdjoint`][], or `"autodiff"`, `"costate"` (default)
        or `"reversible"`.
    - `stepsize_controller`: `None` (fixed steps) or e.g. `diffrax.PIDController(...)`.
    - `max_steps`: the step buffer of an adaptive solve, per slice (default 4096).
    - `encoder`, `decoder`: optional modules (e.g. `eqx.nn.Linear`) mapping the input to
        the state and the final state to the output.

    **Example:**

    ```python
    field = eqx.nn.MLP(2, 2, 32, 1, activation=jnp.tanh, key=key)
    net = deepest.ContinuousNetwork(field, t1=1.0, n_steps=20)
    grads = eqx.filter_grad(lambda n: jnp.sum(jax.vmap(n)(x) ** 2))(net)
    ```
    """

    field: eqx.Module
    encoder: eqx.Module | None
    decoder: eqx.Module | None
    t1: float = eqx.field(static=True)
    n_steps: int = eqx.field(static=True)
    solver: diffrax.AbstractSolver = eqx.field(static=True)
    adjoint: AbstractAdjoint = eqx.field(static=True)
    stepsize_controller: diffrax.AbstractStepSizeController | None = eqx.field(static=True)
    max_steps: int | None = eqx.field(static=True)
    field_takes_time: bool = eqx.field(static=True)

    def __init__(
        self,
        field: eqx.Module,
        t1: float,
        n_steps: int,
        solver: diffrax.AbstractSolver | None = None,
        adjoint: str | AbstractAdjoint = "costate",
        stepsize_controller: diffrax.AbstractStepSizeController | None = None,
        max_steps: int | None = None,
        encoder: eqx.Module | None = None,
        decoder: eqx.Module | None = None,
    ):
        if solver is None:
            solver = ClassicalRK4()
        if isinstance(stepsize_controller, diffrax.ConstantStepSize):
            stepsize_controller = None
        adjoint = as_adjoint(adjoint)
        solver = adjoint.forward_solver(solver)
        self.field = field
        self.encoder = encoder
        self.decoder = decoder
        self.t1 = t1
        self.n_steps = n_steps
        self.solver = solver
        self.adjoint = adjoint
        self.stepsize_controller = stepsize_controller
        self.max_steps = max_steps
        self.field_takes_time = takes_time(as_pieces(field).slice(0))

    def __check_init__(self):
        if isinstance(self.t1, bool) or not isinstance(self.t1, (int, float)):
            raise TypeError(f"`t1` must be a Python number; got {self.t1!r}.")
        if not self.t1 > 0:
            raise ValueError(f"`t1` must be > 0 (integration runs from 0 to t1); got {self.t1}.")
        if not isinstance(self.n_steps, int) or self.n_steps < 1:
            raise ValueError(
                f"`n_steps` must be a positive integer (step size t1/n_steps > 0); "
                f"got {self.n_steps!r}."
            )
        if self.n_steps % self.n_slices != 0:
            raise ValueError(
                f"`n_steps` ({self.n_steps}) must be a multiple of the field's "
                f"`n_slices` ({self.n_slices}), so that parameters switch at step "
                "boundaries."
            )
        self.adjoint.check(self.solver, self.stepsize_controller)
        if self.stepsize_controller is not None and isinstance(
            self.solver, (ClassicalRK4, diffrax.Euler)
        ):
            raise ValueError(
                f"{type(self.solver).__name__} has no error estimate for adaptive "
                "stepping; use e.g. diffrax.Dopri5() or diffrax.Tsit5()."
            )
        if self.max_steps is not None and (
            not isinstance(self.max_steps, int) or self.max_steps < self.steps_per_slice
        ):
            raise ValueError(
                f"`max_steps` must be an integer ≥ the steps per slice "
                f"({self.steps_per_slice}); got {self.max_steps!r}."
            )

    @property
    def n_slices(self) -> int:
        """The number of time slices with their own parameters (1 for a plain field)."""
        return as_pieces(self.field).n_slices

    @property
    def steps_per_slice(self) -> int:
        return self.n_steps // self.n_slices

    def _integration(self) -> Integration:
        if self.stepsize_controller is None:
            max_steps = None
        else:
            max_steps = 4096 if self.max_steps is None else self.max_steps
        return Integration(self.solver, self.steps_per_slice, self.stepsize_controller, max_steps)

    def _stacked(self) -> PyTree:
        # Every slice's field with its arrays stacked on a leading axis, so that slices
        # are one `lax.scan`; a plain field is a stack of one.
        return as_pieces(self.field).fields

    def _slice_times(self, k, dtype):
        width = self.t1 / self.n_slices
        t0 = k.astype(dtype) * width
        return t0, t0 + width

    def encode(self, x: Float[Array, " n_in"]) -> Float[Array, " dim"]:
        """The initial state x(0)."""
        return x if self.encoder is None else self.encoder(x)

    def integrate(self, x0: Float[Array, " dim"]) -> Float[Array, " dim"]:
        """The state x(T) from x(0), differentiated as `adjoint` says."""
        x0 = jnp.asarray(x0)
        if x0.ndim != 1 or not jnp.issubdtype(x0.dtype, jnp.inexact):
            raise ValueError(
                f"The state must be a 1-D floating array (vmap for batches); got shape "
                f"{x0.shape} and dtype {x0.dtype}."
            )
        dynamic, static = eqx.partition(self._stacked(), eqx.is_array)
        integration = self._integration()

        def body(x, slice_):
            k, dynamic_k = slice_
            field = TimeField(eqx.combine(dynamic_k, static), self.field_takes_time)
            t0, t1 = self._slice_times(k, x.dtype)
            return self.adjoint.solve(field, x, t0, t1, integration), None

        x_final, _ = jax.lax.scan(body, x0, (jnp.arange(self.n_slices), dynamic))
        return x_final

    def __call__(self, x: Float[Array, " n_in"]) -> Float[Array, " n_out"]:
        x_final = self.integrate(self.encode(x))
        return x_final if self.decoder is None else self.decoder(x_final)

    def costate_sweep(
        self, x: Float[Array, " n_in"], dC_dxL: Float[Array, " n_out"]
    ) -> tuple[Float[Array, "n_times dim"], PyTree]:
        """The costate sweep for one sample: costates at the step times and dC/d(net).

        Forward: x(0) = encoder(x), the solve storing its step states (the reversible
        adjoint stores none). Backward: λ(T) = (∂decoder/∂x(T))ᵀ dC_dxL, then the
        adjoint's segment sweep (the partner sweep, or the reversible sweep) slice by
        slice to λ(0), then the encoder's VJP.

        **Arguments:**

        - `x`: one input.
        - `dC_dxL`: ∂C/∂(network output) for this sample.

        **Returns:**

        `(costates, grad)`: λ at the step times, shape (n_steps + 1, dim), first row
        λ(0), last row λ(T) (slices in order; with adaptive steps each slice's rows are
        its step buffer, rows past its last accepted step repeating the costate there; with
        the reversible adjoint λ_n is the costate ȳ_n + z̄_n of the pair); and dC/d(net)
        with the structure of `eqx.filter_grad` of the network.
        """
        x0, encoder_vjp = (
            (x, None) if self.encoder is None else eqx.filter_vjp(lambda e: e(x), self.encoder)
        )
        dynamic, static = eqx.partition(self._stacked(), eqx.is_array)
        integration = self._integration()

        def field_of(dynamic_k):
            return TimeField(eqx.combine(dynamic_k, static), self.field_takes_time)

        def forward(x_start, slice_):
            k, dynamic_k = slice_
            t0, t1 = self._slice_times(k, x_start.dtype)
            return self.adjoint.segment_forward(field_of(dynamic_k), x_start, t0, t1, integration)

        slices = (jnp.arange(self.n_slices), dynamic)
        x_final, residuals = jax.lax.scan(forward, x0, slices)
        if self.decoder is None:
            costate_final, decoder_grad = dC_dxL, None
        else:
            _, decoder_vjp = eqx.filter_vjp(lambda d, y: d(y), self.decoder, x_final)
            decoder_grad, costate_final = decoder_vjp(dC_dxL)

        def backward(costate, slice_):
            k, dynamic_k, residuals_k = slice_
            t0, t1 = self._slice_times(k, costate.dtype)
            costates, grad = self.adjoint.segment_sweep(
                field_of(dynamic_k), residuals_k, t0, t1, integration, costate
            )
            return costates[0], (costates[:-1], grad.field)

        costate_initial, (costates, field_grads) = jax.lax.scan(
            backward, costate_final, (*slices, residuals), reverse=True
        )
        costates = jnp.concatenate([costates.reshape(-1, costates.shape[-1]), costate_final[None]])
        # The gradient with respect to the stacked slices, pulled back to the field.
        _, unstack = eqx.filter_vjp(lambda f: as_pieces(f).fields, self.field)
        (field_grad,) = unstack(field_grads)
        grad = eqx.filter(self, eqx.is_inexact_array)
        grad = eqx.tree_at(lambda n: n.field, grad, field_grad)
        if self.encoder is not None:
            (encoder_grad,) = encoder_vjp(costate_initial)
            grad = eqx.tree_at(lambda n: n.encoder, grad, encoder_grad)
        if self.decoder is not None:
            grad = eqx.tree_at(lambda n: n.decoder, grad, decoder_grad)
        return costates, grad
