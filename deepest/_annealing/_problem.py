"""The problem protocol shared by everything the annealer solves, and its banded form."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Scalar


class AbstractProblem(eqx.Module):
    """A variational problem `A(X; R_f) = measurement_error(X) + R_f-weighted model_error(X)`.

    Every problem that [`deepest.anneal`][] solves implements this protocol: the data
    assimilation [`deepest.Assimilation`][] and the network training `deepest.Training`.
    The unknowns `X` are a pytree of arrays (the path, and the estimated parameters).

    Subclasses provide:

    - `init(key)`: a random initial guess of the unknowns (one path).
    - `action(unknowns, rf)`: the action at model weight `rf` (a scalar, or an array that
      broadcasts against the model residuals, for per-component weights).
    - `measurement_error(unknowns)`: the R_m-weighted measurement term of the action.
    - `model_error(unknowns)`: the model term with unit weight, so that
      `action(u, rf) == measurement_error(u) + rf * model_error(u)` for scalar `rf`.

    Problems may override `views(unknowns)` to expose named views (e.g. `paths`) of a batch
    of unknowns, `expected_action` for the level a consistent path reaches, and the
    optional `forecast` and `to_model` that results and plots use. A problem whose action
    is a sum of squares of residuals local in time subclasses
    [`deepest.AbstractBandedProblem`][] instead.
    """

    @abc.abstractmethod
    def init(self, key: PRNGKeyArray) -> PyTree[Array]:
        """A random initial guess of the unknowns for one path."""

    @abc.abstractmethod
    def action(self, unknowns: PyTree[Array], rf: ArrayLike) -> Scalar:
        """The action at model weight `rf`."""

    @abc.abstractmethod
    def measurement_error(self, unknowns: PyTree[Array]) -> Scalar:
        """The R_m-weighted measurement term."""

    @abc.abstractmethod
    def model_error(self, unknowns: PyTree[Array]) -> Scalar:
        """The model term with unit weight."""

    @property
    def action_counts(self) -> tuple[ArrayLike, ArrayLike]:
        """(n_m, n_f): the numbers of squared residuals the action's measurement term and
        model term each average over (varanneal's per-term normalisation).

        Optional (needed by [`deepest.laplace`][] and [`deepest.pamc`][]); the default
        raises `ValueError`.
        """
        raise ValueError(
            f"{type(self).__name__} does not say how many residuals its action averages "
            "over (`action_counts`), so its unnormalised action is unknown."
        )

    def unnormalised_action(self, unknowns: PyTree[Array], rf: ArrayLike) -> Scalar:
        """A₀(X; R_f) = −log P(X | Y) + const, the statistical action: the one place where
        it meets the annealer's normalised action A.

        With (n_m, n_f) = `action_counts`,

            A₀(X; R_f) = (n_m/2)·A(X; R_f)
                       = (R_m/2)·Σ (x_obs − y)² + (R_f·n_m/n_f)/2 · Σ (model residual)²,

        the negative log posterior for Gaussian measurement noise of variance 1/R_m per
        measured entry and Gaussian model error of variance 1/(R_f·n_m/n_f) per component
        and model step. So A₀ and A have the same minimisers at every R_f, and the
        annealer's R_f is the model error's precision times n_f/n_m (not the precision
        itself: the action divides each sum by its own count).
        """
        n_m, _ = self.action_counts
        return 0.5 * n_m * self.action(unknowns, rf)

    def log_jacobian(self, unknowns: PyTree[Array]) -> Scalar:
        """log |det ∂(reported quantities)/∂(unknowns)|: the change of variables from the
        unknowns to what results report (e.g. bounded parameters θ = a + (b − a)·σ(u)).

        A flat prior on the reported quantities is exp(log_jacobian) on the unknowns.
        Zero by default (the unknowns are what is reported).
        """
        return jnp.zeros((), jnp.result_type(float))

    def uncertainty_views(self, unknowns: PyTree[Array], std: PyTree[Array]) -> dict[str, Array]:
        """Named standard deviations of a batch of unknowns, from `std`, the marginal
        standard deviations of the unknowns themselves (e.g. `paths_std`, `params_std`).
        Empty by default."""
        return {}

    def check_rf(self, rf: ArrayLike) -> None:  # noqa: B027
        """Raise `ValueError` if `rf` (a schedule's `rf0`) does not fit this problem."""

    @property
    def expected_action(self) -> float | None:
        """The action level of a path consistent with the data, if known."""
        return None

    def views(self, unknowns: PyTree[Array]) -> dict[str, Array]:
        """Named arrays of a batch of unknowns (leading axis: paths), for results."""
        return {}

    def forecast(
        self, unknowns: PyTree[Array], t_end: float, n_times: int = 200
    ) -> tuple[Float[Array, " n"], Float[Array, "n dim"]]:
        """Continue one path's unknowns past the window to `t_end`: `(times, states)`.

        Optional; the default raises `ValueError`.
        """
        raise ValueError(f"{type(self).__name__} defines no forecast of its unknowns.")

    def to_model(self, unknowns: PyTree[Array]) -> eqx.Module:
        """The model (e.g. trained network) that one path's unknowns describe.

        Optional; the default raises `ValueError`.
        """
        raise ValueError(f"{type(self).__name__} defines no model of its unknowns.")


class AbstractBandedProblem(AbstractProblem):
    """A problem whose action is a sum of squares of residuals local in time.

    Needed by [`deepest.LevenbergMarquardt`][] and by the tridiagonal preconditioner of
    [`deepest.LBFGS`][]. Besides [`deepest.AbstractProblem`][]'s methods, subclasses
    provide `banded_shape` (N, d, p), `to_banded(unknowns) -> (states (N, d), params (p,))`,
    its inverse `from_banded`, and `banded_residuals(states, params, rf) -> (node (N, q),
    interval (N − 1, k))` with `action == Σ node² + Σ interval²`, where row n of `node`
    depends on `states[n]` and `params` only, and row n of `interval` on `states[n]`,
    `states[n + 1]` and `params` only.
    """

    @property
    @abc.abstractmethod
    def banded_shape(self) -> tuple[int, int, int]:
        """(N, d, p): the times, the state width and the parameter count of `to_banded`."""

    @abc.abstractmethod
    def to_banded(self, unknowns: PyTree[Array]) -> tuple[Array, Array]:
        """The unknowns as (states (N, d), params (p,))."""

    @abc.abstractmethod
    def from_banded(self, states: Array, params: Array) -> PyTree[Array]:
        """The inverse of `to_banded`."""

    @abc.abstractmethod
    def banded_residuals(self, states: Array, params: Array, rf: ArrayLike) -> tuple[Array, Array]:
        """(node residuals (N, q), interval residuals (N − 1, k)) whose squares sum to the
        action at `rf`."""
