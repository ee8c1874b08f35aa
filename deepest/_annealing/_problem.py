"""The problem protocol shared by everything the annealer solves, and its banded form."""

import abc
import functools
import operator
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Scalar

from .._misc import renamed_keywords


class Block(eqx.Module):
    r"""One block of an action: squared residuals, their weight, and their count.

    A problem's action is the sum over its blocks of

    $$\frac{w}{n} \sum_i r_i^2$$

    with r = `residuals(unknowns)` (an array, or a tuple of arrays that share the block's
    weight and count), n = `count` the number of squared residuals the block averages over
    (varanneal's per-term normalisation), and w its weight: `weight` (R_m for a
    measurement block, broadcasting against each residual array) times, for a `"model"`
    block, the annealed model weight R_f of the call. A new term of the action (a
    background term, a prior on θ, a driving input's residual) is one more block.

    **Arguments:**

    - `residuals`: `unknowns -> r`, what is squared.
    - `count`: n, what the block averages over.
    - `weight`: the fixed weight (R_m, scalar or broadcasting against r; default 1).
    - `term`: `"measurement"` (summed by `measurement_error`) or `"model"` (weighted by
      R_f too, summed by `model_error`).
    - `layout`: for a banded problem, where the rows of r sit in the banded layout: `"node"`
      (row i depends on one time only, of shape (rows, q)) or `"interval"` (row n on times
      n and n + 1, of shape (N − 1, k)).
    - `stride`: node row i of r lies at banded row `i·stride` (rows between are zero).
    """

    residuals: Callable[[PyTree[Array]], Array | tuple[Array, ...]]
    count: ArrayLike
    weight: ArrayLike = 1.0
    term: Literal["measurement", "model"] = eqx.field(static=True, default="measurement")
    layout: Literal["node", "interval"] | None = eqx.field(static=True, default=None)
    stride: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if self.term not in ("measurement", "model"):
            raise ValueError(f"A block's `term` is 'measurement' or 'model'; got {self.term!r}.")
        if self.layout not in (None, "node", "interval"):
            raise ValueError(f"A block's `layout` is 'node' or 'interval'; got {self.layout!r}.")

    def scale(self, rf: ArrayLike) -> ArrayLike:
        """w/n: the factor of Σ r² in the action at model weight `rf` (the one place where
        a count divides)."""
        weight = self.weight * rf if self.term == "model" else self.weight
        return weight / self.count

    def arrays(self, unknowns: PyTree[Array]) -> tuple[Array, ...]:
        """The residual arrays of `unknowns`, as a tuple."""
        r = self.residuals(unknowns)
        return tuple(r) if isinstance(r, (tuple, list)) else (r,)


def unnormalised_scale(count: ArrayLike) -> ArrayLike:
    """count/2: the ratio of a block's Gaussian negative log-likelihood (w/2)·Σ r² to its
    term (w/count)·Σ r² in the normalised action, so that A₀ = (n_m/2)·A (see
    [`deepest.AbstractProblem.unnormalised_action`][]). The one place this factor is
    written; [`deepest.discrete_weights`][] uses it too."""
    return count / 2


class AbstractProblem(eqx.Module):
    """A variational problem `A(X; R_f) = measurement_error(X) + R_f-weighted model_error(X)`.

    Every problem that [`deepest.anneal`][] solves implements this protocol: the data
    assimilation [`deepest.Assimilation`][] and the network training [`deepest.training`][].
    The unknowns `X` are a pytree of arrays (the path, and the estimated parameters).

    Subclasses provide `init(key)` (a random initial guess of the unknowns, one path) and
    declare their action once, as `residual_blocks()`: a tuple of
    `deepest.annealing.Block` (what is squared, its weight R_m or R_f, what it averages
    over). From it the protocol derives

    - `action(unknowns, rf)`: the action at model weight `rf` (a scalar, or an array that
      broadcasts against the model residuals, for per-component weights), the sum of every
      block's (w/n)·Σ r²;
    - `measurement_error(unknowns)`: the sum of the `"measurement"` blocks;
    - `model_error(unknowns)`: the `"model"` blocks with unit weight, so that
      `action(u, rf) == measurement_error(u) + rf * model_error(u)` for scalar `rf`;
    - `action_counts` (n_m, n_f) and `unnormalised_action` A₀ = (n_m/2)·A.

    A problem whose action is not a sum of squares may instead override `action`,
    `measurement_error` and `model_error` themselves (then it has no `action_counts`).

    Problems may override `views(unknowns)` to expose named views (e.g. `paths`) of a batch
    of unknowns, `expected_action` for the level a consistent path reaches, and the
    optional `forecast` and `to_model` that results and plots use. A problem whose action
    is a sum of squares of residuals local in time subclasses
    [`deepest.AbstractBandedProblem`][] instead.
    """

    @abc.abstractmethod
    def init(self, key: PRNGKeyArray) -> PyTree[Array]:
        """A random initial guess of the unknowns for one path."""

    def residual_blocks(self) -> tuple[Block, ...]:
        """The blocks of squared residuals whose sum is the action (see
        `deepest.annealing.Block`). The default raises `NotImplementedError`: a problem
        either declares its blocks or overrides `action`, `measurement_error` and
        `model_error`."""
        raise NotImplementedError(
            f"{type(self).__name__} declares no `residual_blocks`; define them, or override "
            "`action`, `measurement_error` and `model_error`."
        )

    def _block_sum(self, unknowns: PyTree[Array], rf: ArrayLike, terms: tuple[str, ...]) -> Scalar:
        """Σ over the blocks of `terms` of (w/n)·Σ r² at model weight `rf`."""
        sums = []
        for block in self.residual_blocks():
            if block.term not in terms:
                continue
            scale = block.scale(rf)
            for r in block.arrays(unknowns):
                # `scale` scalar or per component: broadcast along the rows explicitly
                sums.append(jnp.sum(jnp.broadcast_to(scale, r.shape) * r**2))
        if not sums:
            return jnp.zeros((), jnp.result_type(float))
        return functools.reduce(operator.add, sums)

    def action(self, unknowns: PyTree[Array], rf: ArrayLike) -> Scalar:
        """The action at model weight `rf`: every block's (w/n)·Σ r²."""
        return self._block_sum(unknowns, rf, ("measurement", "model"))

    def measurement_error(self, unknowns: PyTree[Array]) -> Scalar:
        """The R_m-weighted measurement term: the `"measurement"` blocks."""
        return self._block_sum(unknowns, 1.0, ("measurement",))

    def model_error(self, unknowns: PyTree[Array]) -> Scalar:
        """The model term with unit weight: the `"model"` blocks at R_f = 1."""
        return self._block_sum(unknowns, 1.0, ("model",))

    @property
    def action_counts(self) -> tuple[ArrayLike, ArrayLike]:
        """(n_m, n_f): the numbers of squared residuals the action's measurement term and
        model term each average over (varanneal's per-term normalisation), read from the
        `residual_blocks` (the count of the first block of each term).

        Needed by [`deepest.laplace`][] and [`deepest.pamc`][]; raises `ValueError` for a
        problem that declares no blocks.
        """
        try:
            blocks = self.residual_blocks()
        except NotImplementedError:
            blocks = ()
        counts = {}
        for block in blocks:
            counts.setdefault(block.term, block.count)
        if "measurement" not in counts or "model" not in counts:
            raise ValueError(
                f"{type(self).__name__} does not say how many residuals its action averages "
                "over (`action_counts`), so its unnormalised action is unknown."
            )
        return counts["measurement"], counts["model"]

    @property
    def unnormalised_scale(self) -> ArrayLike:
        """n_m/2, the factor from the action A to the unnormalised action A₀."""
        n_m, _ = self.action_counts
        return unnormalised_scale(n_m)

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
        return self.unnormalised_scale * self.action(unknowns, rf)

    def log_jacobian(self, unknowns: PyTree[Array]) -> Scalar:
        """log |det ∂(reported quantities)/∂(unknowns)|: the change of variables from the
        unknowns to what results report (e.g. bounded parameters θ = a + (b − a)·σ(u)).

        A flat prior on the reported quantities is exp(log_jacobian) on the unknowns.
        Zero by default (the unknowns are what is reported), in the unknowns' dtype.
        """
        leaves = [x for x in jax.tree.leaves(unknowns) if jnp.issubdtype(x.dtype, jnp.floating)]
        return jnp.zeros((), leaves[0].dtype if leaves else jnp.result_type(float))

    def uncertainty_views(self, unknowns: PyTree[Array], std: PyTree[Array]) -> dict[str, Array]:
        """Named standard deviations of a batch of unknowns, from `std`, the marginal
        standard deviations of the unknowns themselves (e.g. `paths_std`, `params_std`).
        Empty by default."""
        return {}

    def check_rf(self, rf: ArrayLike) -> None:  # noqa: B027
        """Raise `ValueError` if `rf` (a schedule's `rf0`) does not fit this problem."""

    @property
    def banded_shape(self) -> tuple[int, int, int] | None:
        """(N, d, p) for a problem whose action is a sum of squares of residuals local in
        time (a [`deepest.AbstractBandedProblem`][], with `to_banded`, `from_banded` and
        `banded_residuals`), else `None` (the default): how a minimiser asks whether it
        may use that structure."""
        return None

    @property
    def expected_action(self) -> float | None:
        """The action level of a path consistent with the data, if known."""
        return None

    @property
    def parameter_bounds(self) -> dict[str, tuple[float, float]]:
        """{name: (low, high)} of the parameters confined to a box (results flag an
        estimate that ends on its bound). None by default."""
        return {}

    def bounds(self) -> tuple[PyTree[Array], PyTree[Array]] | None:
        """(lower, upper): box constraints on the unknowns, two pytrees of the structure and
        shapes of `init(key)`'s, with −inf / +inf where an entry is free; `None` (the
        default) when nothing is bounded.

        The minimisers keep every iterate inside the box themselves (projected steps and an
        active set, as L-BFGS-B), so the unknowns are what results report and an estimate
        can leave a bound when the gradient says so; `init` must draw inside it."""
        return None

    def model_sensitivity(self, unknowns: PyTree[Array]) -> Array | None:
        """max |wᵀ·∂f/∂x| over the model times of one path's `unknowns`, for the problem's
        model map f and a fixed random w: zero when f does not depend on the state to first
        order (a model built from `jnp.floor`), which `anneal` warns of before it starts.
        `None` (the default) for a problem without one model map."""
        return None

    def views(self, unknowns: PyTree[Array]) -> dict[str, Array]:
        """Named arrays of a batch of unknowns (leading axis: paths), for results."""
        return {}

    @renamed_keywords(t_end="t1")
    def forecast(
        self, unknowns: PyTree[Array], t1: float, n_times: int = 200
    ) -> tuple[Float[Array, " n"], Float[Array, "n dim"]]:
        """Continue one path's unknowns past the window to the end time `t1`:
        `(times, states)`.

        Optional; the default raises `ValueError`. An override keeps the deprecated keyword
        `t_end` with `deepest._misc.renamed_keywords(t_end="t1")`.
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
    provide `banded_shape` (N, d, p), `to_banded(unknowns) -> (states (N, d), params (p,))`
    and its inverse `from_banded`, and give each of their `residual_blocks` a `layout`.
    From those, `banded_residuals(states, params, rf) -> (node (N, q), interval (N − 1, k))`
    is derived, with `action == Σ node² + Σ interval²`, where row n of `node` depends on
    `states[n]` and `params` only, and row n of `interval` on `states[n]`, `states[n + 1]`
    and `params` only.
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

    def banded_residuals(
        self, states: Array, params: Array, rf: ArrayLike
    ) -> tuple[Float[Array, "N q"], Float[Array, "N-1 k"]]:
        """(node residuals (N, q), interval residuals (N − 1, k)) whose squares sum to the
        action at `rf`: each block's √(w/n)·r, node blocks side by side (a block of stride
        s on the rows 0, s, 2s, …, zero between), interval blocks side by side."""
        unknowns = self.from_banded(states, params)
        n = self.banded_shape[0]
        node, interval = [], []
        for block in self.residual_blocks():
            if block.layout is None:
                raise ValueError(
                    f"{type(self).__name__} has a residual block without a banded `layout`."
                )
            root = jnp.sqrt(block.scale(rf))
            for r in block.arrays(unknowns):
                r = (jnp.broadcast_to(root, r.shape) * r).reshape(r.shape[0], -1)
                if block.layout == "interval":
                    interval.append(r)
                elif block.stride == 1 and r.shape[0] == n:
                    node.append(r)
                else:
                    rows = jnp.zeros((n, r.shape[1]), r.dtype)
                    node.append(rows.at[:: block.stride].set(r))
        return _side_by_side(node, n, states.dtype), _side_by_side(interval, n - 1, states.dtype)

    def unnormalised_banded_residuals(
        self, states: Array, params: Array, rf: ArrayLike
    ) -> tuple[Float[Array, "N q"], Float[Array, "N-1 k"]]:
        """`banded_residuals` scaled so that A₀ = ½(Σ node² + Σ interval²) (see
        `unnormalised_action`)."""
        node, interval = self.banded_residuals(states, params, rf)
        root = jnp.sqrt(2 * self.unnormalised_scale)
        return root * node, root * interval


def _side_by_side(arrays: list[Array], rows: int, dtype) -> Array:
    if not arrays:
        return jnp.zeros((rows, 0), dtype)
    return arrays[0] if len(arrays) == 1 else jnp.concatenate(arrays, axis=1)
