"""How a continuous layer is differentiated: the adjoints, a family of Modules.

Three ways to differentiate one forward solve x(t_0) ↦ x(t_1) of dx/dt = F(t, x; θ), each
an [`deepest.AbstractAdjoint`][] passed as `ContinuousNetwork(adjoint=...)`, the way
diffrax takes `diffeqsolve(adjoint=...)`:

- [`deepest.AutodiffAdjoint`][]: JAX differentiates through diffrax's steps
  (`diffrax.RecursiveCheckpointAdjoint`); the reference.
- [`deepest.CostateAdjoint`][]: the forward solve stores the step states only; the backward
  pass is the division-free symplectic partner sweep of the forward tableau
  ([`deepest.integrators.partner_sweep`][]), exactly the gradient of the discrete forward
  pass, exposed through `jax.custom_vjp`. With an adaptive step-size controller the
  accepted step times are recorded (buffer of `max_steps`) and replayed.
- [`deepest.ReversibleAdjoint`][]: the forward scheme is
  [`deepest.integrators.ReversibleRK`][]; the backward pass rebuilds each state from the
  last one by the exact inverse step, so its memory does not depend on the number of steps.

Step times are not differentiated by any of them. For adaptive solves this is also what
diffrax does: its `PIDController` stops gradients through the step-size choice, so the
autodiff reference treats the accepted step times as fixed, as the replay does.

Besides the gradient of a solve, each adjoint gives the explicit costate sweep of a
segment (`segment_forward`, then `segment_sweep`), which
[`deepest.ContinuousNetwork.costate_sweep`][] runs slice by slice.
"""

import abc
from collections.abc import Callable

import diffrax
import equinox as eqx
from jaxtyping import Array, Float, PyTree

from .._misc import did_you_mean
from ..integrators import ReversibleRK, partner_sweep, tableau_coefficients
from ._integration import Integration
from ._reversible_sweep import reversible_sweep

Field = Callable[[Float[Array, ""], Float[Array, " dim"]], Float[Array, " dim"]]


class AbstractAdjoint(eqx.Module):
    """How a [`deepest.ContinuousNetwork`][] differentiates its continuous layer.

    A member says which scheme runs forward for the network's `solver`
    (`forward_solver`), checks that it can differentiate that solver and step-size
    control (`check`), integrates one segment differentiably (`solve`), and gives the
    explicit costate sweep of one segment (`segment_forward`, then `segment_sweep`).
    """

    def forward_solver(self, solver: diffrax.AbstractSolver) -> diffrax.AbstractSolver:
        """The scheme that runs forward for the network's `solver` (by default `solver`)."""
        return solver

    @abc.abstractmethod
    def check(
        self,
        solver: diffrax.AbstractSolver,
        stepsize_controller: diffrax.AbstractStepSizeController | None,
    ) -> None:
        """Raise an error a user can act on if this adjoint cannot differentiate a solve
        with `solver` and `stepsize_controller` (`None` for fixed steps)."""

    @abc.abstractmethod
    def solve(
        self,
        field: Field,
        x0: Float[Array, " dim"],
        t0: Float[Array, ""],
        t1: Float[Array, ""],
        integration: Integration,
    ) -> Float[Array, " dim"]:
        """x(t_1) from x(t_0) = `x0`, differentiable in `field` and `x0` this adjoint's way."""

    @abc.abstractmethod
    def segment_forward(
        self,
        field: Field,
        x0: Float[Array, " dim"],
        t0: Float[Array, ""],
        t1: Float[Array, ""],
        integration: Integration,
    ) -> tuple[Float[Array, " dim"], PyTree[Array]]:
        """Forward solve of one segment, keeping what its costate sweep needs.

        **Returns:** `(x(t_1), residuals)`, the residuals for `segment_sweep`.
        """

    @abc.abstractmethod
    def segment_sweep(
        self,
        field: Field,
        residuals: PyTree[Array],
        t0: Float[Array, ""],
        t1: Float[Array, ""],
        integration: Integration,
        costate_final: Float[Array, " dim"],
    ) -> tuple[Float[Array, "n_times dim"], PyTree]:
        """The costate sweep of one segment from λ(t_1), given `segment_forward`'s residuals.

        **Returns:** `(costates, field_grad)`: λ at the segment's step times (first row
        λ(t_0), last row λ(t_1)) and dC/d(field).
        """

    def segment_pullback(
        self,
        field: Field,
        residuals: PyTree[Array],
        t0: Float[Array, ""],
        t1: Float[Array, ""],
        integration: Integration,
        cotangent: Float[Array, " dim"],
    ) -> tuple[PyTree, Float[Array, " dim"]]:
        """The pullback of one segment's solve: `(dC/d(field), dC/dx(t_0))` from
        `cotangent` = dC/dx(t_1). By default the first row of `segment_sweep`'s costates;
        an adjoint that can pull back without storing every costate overrides it."""
        costates, field_grad = self.segment_sweep(field, residuals, t0, t1, integration, cotangent)
        return field_grad, costates[0]


# One forward solve x(t_0) ↦ x(t_1) whose backward pass is `adjoint`'s own: its
# `segment_forward` keeps the residuals, its `segment_pullback` transposes the solve.
@eqx.filter_custom_vjp
def _solve(field_and_x0, t0, t1, integration, adjoint):
    del adjoint
    field, x0 = field_and_x0
    return integration.final_state(field, x0, t0, t1)


@_solve.def_fwd
def _solve_fwd(perturbed, field_and_x0, t0, t1, integration, adjoint):
    del perturbed
    field, x0 = field_and_x0
    return adjoint.segment_forward(field, x0, t0, t1, integration)


@_solve.def_bwd
def _solve_bwd(residuals, cotangent, perturbed, field_and_x0, t0, t1, integration, adjoint):
    del perturbed
    field, _ = field_and_x0
    return adjoint.segment_pullback(field, residuals, t0, t1, integration, cotangent)


class _AbstractRungeKuttaAdjoint(AbstractAdjoint):
    # The explicit sweep of an explicit Runge–Kutta forward pass, shared by the autodiff
    # and costate adjoints: the step states forward, the partner sweep backward.

    def segment_forward(self, field, x0, t0, t1, integration):
        ts, xs, x_final = integration.steps(field, x0, t0, t1)
        return x_final, (ts, xs)

    def segment_sweep(self, field, residuals, t0, t1, integration, costate_final):
        del t0, t1
        ts, xs = residuals
        coefficients = tableau_coefficients(integration.solver)
        return partner_sweep(field, coefficients, ts, xs, costate_final)


class AutodiffAdjoint(_AbstractRungeKuttaAdjoint):
    """Differentiate the continuous layer by JAX through diffrax's steps (the reference).

    The gradient is `diffrax.RecursiveCheckpointAdjoint`'s; any diffrax solver and step-size
    controller work. The explicit costate sweep
    ([`deepest.ContinuousNetwork.costate_sweep`][]) is the partner sweep of an explicit
    Runge–Kutta `solver`, as for [`deepest.CostateAdjoint`][].
    """

    def check(self, solver, stepsize_controller):
        del solver, stepsize_controller

    def solve(self, field, x0, t0, t1, integration):
        return integration.final_state(field, x0, t0, t1)


class CostateAdjoint(_AbstractRungeKuttaAdjoint):
    """Differentiate the continuous layer by the exact partner costate sweep (the default).

    The forward pass stores the step states only; the backward pass is the division-free
    symplectic partner sweep of the forward Runge–Kutta tableau (Sanz-Serna 2016), the
    exact gradient of the discrete forward pass, through `jax.custom_vjp`:
    λ(T) = ∂C/∂x(T), λ_n = (∂x_{n+1}/∂x_n)ᵀ λ_{n+1}, dC/dθ = Σ_n Σ_i (∂F/∂θ(X_i))ᵀ K̄_i.
    With an adaptive `stepsize_controller` the accepted steps are recorded (buffer of
    `max_steps`) and replayed; the step times are treated as fixed, as diffrax's
    `PIDController` does under autodiff.

    Needs an explicit Runge–Kutta `solver` (`diffrax.Euler`, `diffrax.Heun`,
    [`deepest.integrators.ClassicalRK4`][], `diffrax.Dopri5`, `diffrax.Tsit5`, ...).
    """

    def check(self, solver, stepsize_controller):
        del stepsize_controller
        # Raises a TypeError naming what is accepted unless `solver` is explicit RK.
        tableau_coefficients(solver)

    def solve(self, field, x0, t0, t1, integration):
        return _solve((field, x0), t0, t1, integration, self)


class ReversibleAdjoint(AbstractAdjoint):
    """Differentiate the continuous layer at memory independent of the number of steps.

    The forward scheme is the reversible Runge–Kutta method of McCallum & Foster (2024)
    around `solver` ([`deepest.integrators.ReversibleRK`][]); the backward pass rebuilds
    the states exactly from the final pair (y, z) by the inverse step, so its memory does
    not grow with `n_steps`. A plain `solver` gets the default coupling rate κ = 1
    (coupling λ = e^{−κh} per step), which bounds the rebuild's amplification of rounding
    by e^{κT} however many steps are taken; pass a `ReversibleRK` to choose κ for a
    dissipative field (see its docstring for the stability trade-off). Takes fixed steps.

    In the explicit costate sweep the costate at step n is ȳ_n + z̄_n, the costate of the
    pair's common initial value y_n = z_n.
    """

    def forward_solver(self, solver):
        return solver if isinstance(solver, ReversibleRK) else ReversibleRK(solver)

    def check(self, solver, stepsize_controller):
        if stepsize_controller is not None:
            raise ValueError(
                "`adjoint='reversible'` takes fixed steps; pass `stepsize_controller=None`."
            )
        if not isinstance(solver, ReversibleRK):
            raise TypeError(
                "The reversible adjoint runs a `deepest.integrators.ReversibleRK` forward; "
                f"got {type(solver).__name__}."
            )

    def solve(self, field, x0, t0, t1, integration):
        return _solve((field, x0), t0, t1, integration, self)

    def segment_forward(self, field, x0, t0, t1, integration):
        y_final, z_final = integration.final_pair(field, x0, t0, t1)
        return y_final, (y_final, z_final)

    def segment_pullback(self, field, residuals, t0, t1, integration, cotangent):
        # The rebuild walks back from the final pair holding only the current one.
        y_final, z_final = residuals
        x0_bar, field_grad = reversible_sweep(
            field, integration.solver, t0, t1, integration.n_steps, y_final, z_final, cotangent
        )
        return field_grad, x0_bar

    def segment_sweep(self, field, residuals, t0, t1, integration, costate_final):
        y_final, z_final = residuals
        _, grad, costates = reversible_sweep(
            field,
            integration.solver,
            t0,
            t1,
            integration.n_steps,
            y_final,
            z_final,
            costate_final,
            return_costates=True,
        )
        return costates, grad


_ADJOINTS: dict[str, type[AbstractAdjoint]] = {
    "autodiff": AutodiffAdjoint,
    "costate": CostateAdjoint,
    "reversible": ReversibleAdjoint,
}


def as_adjoint(adjoint: str | AbstractAdjoint) -> AbstractAdjoint:
    """`adjoint` as an [`deepest.AbstractAdjoint`][]: the names `"autodiff"`, `"costate"`
    and `"reversible"` stand for [`deepest.AutodiffAdjoint`][],
    [`deepest.CostateAdjoint`][] and [`deepest.ReversibleAdjoint`][]."""
    if isinstance(adjoint, AbstractAdjoint):
        return adjoint
    if isinstance(adjoint, str) and adjoint in _ADJOINTS:
        return _ADJOINTS[adjoint]()
    names = ", ".join(repr(name) for name in _ADJOINTS)
    hint = did_you_mean(adjoint, _ADJOINTS) if isinstance(adjoint, str) else ""
    raise ValueError(
        f"`adjoint` must be one of {names} or a `deepest.AbstractAdjoint`; got {adjoint!r}." + hint
    )
