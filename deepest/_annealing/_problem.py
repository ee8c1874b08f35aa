"""The problem protocol shared by everything the annealer solves, and its banded form."""

import abc

import equinox as eqx
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
