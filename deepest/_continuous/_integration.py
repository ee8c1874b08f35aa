"""One time segment of a continuous layer, integrated forward with diffrax."""

from collections.abc import Callable

import diffrax
import equinox as eqx
from jaxtyping import Array, Float, PyTree


class Integration(eqx.Module):
    """How one time segment is integrated: solver, steps and step-size control.

    **Arguments:**

    - `solver`: a diffrax solver; an explicit RK method for the costate sweep, a
        [`deepest.integrators.ReversibleRK`][] for the reversible one.
    - `n_steps`: the number of steps (fixed stepping), or the initial step t_span/n_steps
        of an adaptive solve.
    - `stepsize_controller`: `None` for fixed steps, else a diffrax controller.
    - `max_steps`: size of the step buffer of an adaptive solve.
    """

    solver: diffrax.AbstractSolver = eqx.field(static=True)
    n_steps: int = eqx.field(static=True)
    stepsize_controller: diffrax.AbstractStepSizeController | None = eqx.field(
        static=True, default=None
    )
    max_steps: int | None = eqx.field(static=True, default=None)

    @property
    def buffer_size(self) -> int:
        return self.n_steps if self.max_steps is None else self.max_steps

    def diffeqsolve(
        self,
        field: Callable,
        x0: Float[Array, " dim"],
        t0: Float[Array, ""],
        t1: Float[Array, ""],
        saveat: diffrax.SaveAt,
    ) -> diffrax.Solution:
        """`diffrax.diffeqsolve` of dx/dt = field(t, x) from x(t_0) = x0 to t_1.

        JAX differentiates it through diffrax's steps (`diffrax.RecursiveCheckpointAdjoint`).
        """
        controller = self.stepsize_controller
        return diffrax.diffeqsolve(
            _TERM,
            self.solver,
            t0,
            t1,
            (t1 - t0) / self.n_steps,
            x0,
            args=field,
            saveat=saveat,
            stepsize_controller=diffrax.ConstantStepSize() if controller is None else controller,
            max_steps=self.buffer_size,
            adjoint=diffrax.RecursiveCheckpointAdjoint(),
        )

    def final_state(
        self, field: Callable, x0: Float[Array, " dim"], t0: Float[Array, ""], t1: Float[Array, ""]
    ) -> Float[Array, " dim"]:
        """x(t_1) alone."""
        return self.diffeqsolve(field, x0, t0, t1, diffrax.SaveAt(t1=True)).ys[-1]

    def steps(
        self, field: Callable, x0: Float[Array, " dim"], t0: Float[Array, ""], t1: Float[Array, ""]
    ) -> tuple[Float[Array, " n"], Float[Array, "n dim"], Float[Array, " dim"]]:
        """The forward solve, storing the state at every accepted step (no stages).

        **Returns:**

        `(ts, xs, x_final)`: times and states from t_0 on (padded with `inf` after the
        last accepted step of an adaptive solve), and the state at t_1.
        """
        sol = self.diffeqsolve(field, x0, t0, t1, diffrax.SaveAt(t0=True, steps=True))
        x_final = sol.ys[sol.stats["num_accepted_steps"]]
        return sol.ts, sol.ys, x_final

    def final_pair(
        self, field: Callable, x0: Float[Array, " dim"], t0: Float[Array, ""], t1: Float[Array, ""]
    ) -> tuple[Float[Array, " dim"], PyTree]:
        """The reversible forward solve, keeping only the final pair (y, z)."""
        sol = self.diffeqsolve(field, x0, t0, t1, diffrax.SaveAt(t1=True, solver_state=True))
        return sol.ys[-1], sol.solver_state


def _vector_field(t, x, field):
    return field(t, x)


_TERM = diffrax.ODETerm(_vector_field)
