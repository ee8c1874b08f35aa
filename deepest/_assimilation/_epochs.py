"""Several recordings of one system (epochs) that share its parameters: one action."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._annealing import AbstractBandedProblem, Block
from ._assimilation import Assimilation


class Epochs(AbstractBandedProblem):
    r"""One cell (one system) recorded in several windows, each with its own data, inputs
    and hidden states, sharing the estimated parameters: e.g. a neuron's current-clamp
    sweeps fitted together.

    The action is one action over all epochs' residuals: each block (measurement, model,
    background) sums over the epochs and averages over all of their entries, so that the
    unnormalised action is the sum of the epochs' own, A₀ = Σ_e A₀,e, the negative log
    posterior of independent recordings with shared θ. The epochs are batched
    (`jax.vmap` over one stacked [`deepest.Assimilation`][]), so they must have the same
    shapes: observation times, steps, observed components, input samples.

    The unknowns are `{"path": (E, N_model, D), "params": {...}}` (and `"midpoints"`
    (E, N_model − 1, D)). In the banded layout the epochs' states follow one another in
    time, with no model residual between the end of one and the start of the next, so
    [`deepest.LevenbergMarquardt`][], the preconditioner of [`deepest.LBFGS`][] and
    [`deepest.laplace`][] apply unchanged.

    **Arguments:**

    - `problems`: the epochs, each a [`deepest.Assimilation`][] of the same model,
      `estimate`, discretisation, `steps_per_obs`, starting ranges and bounds.

    **Example:**

        sweeps = [deepest.Assimilation(deepest.models.NaKL(), data_e, rm=1.0, inputs=u_e,
                                       estimate=names, bounds=deepest.models.NaKL.bounds,
                                       state_bounds=deepest.models.NaKL.state_bounds)
                  for data_e, u_e in zip(recordings, stimuli)]
        result = deepest.anneal(deepest.Epochs(sweeps), schedule, n_paths=16, key=key)
    """

    stacked: Assimilation
    n_epochs: int = eqx.field(static=True)

    def __init__(self, problems: Sequence[Assimilation]):
        problems = list(problems)
        if not problems or not all(isinstance(p, Assimilation) for p in problems):
            raise TypeError("`problems` must be a non-empty sequence of deepest.Assimilation.")
        first = problems[0]
        for i, p in enumerate(problems[1:], 1):
            _check_alike(first, p, i)
        if first.background is not None and first.background.size > first.dim:
            raise ValueError(
                "An epoch's background covers the shared parameters too: it would enter once "
                "per epoch. Give the epochs backgrounds on their first states only."
            )
        self.stacked = jtu.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *problems)
        self.n_epochs = len(problems)

    def epoch(self, i: int) -> Assimilation:
        """The `i`-th epoch's own problem."""
        return jtu.tree_map(lambda x: x[i], self.stacked)

    @property
    def estimate(self) -> tuple[str, ...]:
        return self.stacked.estimate

    @property
    def _one(self) -> Assimilation:
        return self.epoch(0)

    # -- unknowns -----------------------------------------------------------------------
    def _per_epoch(self, unknowns):
        """The axes over which the epochs' unknowns are mapped: everything but `params`."""
        return {k: (None if k == "params" else 0) for k in unknowns}

    def _map(self, method, unknowns):
        return jax.vmap(method, in_axes=(0, self._per_epoch(unknowns)))(self.stacked, unknowns)

    def init(self, key: PRNGKeyArray) -> PyTree[Array]:
        """Each epoch's starting path drawn as its problem draws it; the shared parameters
        from the first epoch's draw."""
        keys = jr.split(key, self.n_epochs)
        drawn = jax.vmap(lambda p, k: p.init(k))(self.stacked, keys)
        return {**drawn, "params": jtu.tree_map(lambda x: x[0], drawn["params"])}

    def bounds(self):
        box = self._one.bounds()
        if box is None:
            return None

        def widen(side):
            return {
                k: (v if k == "params" else jnp.broadcast_to(v, (self.n_epochs,) + v.shape))
                for k, v in side.items()
            }

        return widen(box[0]), widen(box[1])

    @property
    def parameter_bounds(self) -> dict[str, tuple[float, float]]:
        return self._one.parameter_bounds

    def parameters(self, unknowns: PyTree[Array]) -> dict[str, Array]:
        """The shared estimated parameters θ."""
        return dict(unknowns["params"])

    # -- the action ---------------------------------------------------------------------
    def _rows(self, r: Array, stride: int) -> Array:
        """Node rows (E, n, q) of stride `stride` as (E·N_model, q) banded rows."""
        n = self._one.n_model
        rows = jnp.zeros((self.n_epochs, n, r.shape[-1]), r.dtype)
        return rows.at[:, ::stride].set(r).reshape(self.n_epochs * n, -1)

    def _intervals(self, r: Array) -> Array:
        """Interval rows (E, N_model − 1, k) as (E·N_model − 1, k) banded rows: a zero row
        between one epoch's end and the next one's start."""
        padded = jnp.concatenate([r, jnp.zeros_like(r[:, :1])], axis=1)
        return padded.reshape(-1, r.shape[-1])[:-1]

    def residual_blocks(self) -> tuple[Block, ...]:
        """Each of the epochs' blocks over all epochs: the residuals side by side in time,
        the counts summed (weights are the epochs' own: they must be equal)."""
        one = self._one
        dtype = self.stacked.data.values.dtype
        counts = jax.vmap(
            lambda p: tuple(jnp.asarray(b.count, dtype) for b in p.residual_blocks())
        )(self.stacked)
        blocks = []
        for i, block in enumerate(one.residual_blocks()):

            def residuals(unknowns, i=i, block=block):
                def arrays(p, u):
                    return p.residual_blocks()[i].arrays(u)

                mapped = jax.vmap(arrays, in_axes=(0, self._per_epoch(unknowns)))(
                    self.stacked, unknowns
                )
                if block.layout == "interval":
                    return tuple(self._intervals(r.reshape(r.shape[:2] + (-1,))) for r in mapped)
                return tuple(
                    self._rows(r.reshape(r.shape[:2] + (-1,)), block.stride) for r in mapped
                )

            blocks.append(
                Block(
                    residuals,
                    jnp.sum(counts[i]),
                    block.weight,
                    term=block.term,
                    layout=block.layout,
                )
            )
        return tuple(blocks)

    # -- banded layout ------------------------------------------------------------------
    @property
    def banded_shape(self) -> tuple[int, int, int]:
        n, d, p = self._one.banded_shape
        return self.n_epochs * n, d, p

    def to_banded(self, unknowns: PyTree[Array]) -> tuple[Array, Array]:
        states, params = jax.vmap(
            lambda p, u: p.to_banded(u), in_axes=(0, self._per_epoch(unknowns))
        )(self.stacked, unknowns)
        return states.reshape(-1, states.shape[-1]), params[0]

    def from_banded(self, states: Array, params: Array) -> PyTree[Array]:
        states = states.reshape(self.n_epochs, -1, states.shape[-1])
        out = jax.vmap(lambda p, s: p.from_banded(s, params))(self.stacked, states)
        return {**out, "params": jtu.tree_map(lambda x: x[0], out["params"])}

    def check_rf(self, rf: ArrayLike) -> None:
        self._one.check_rf(rf)

    @property
    def expected_action(self) -> float | None:
        return self._one.expected_action

    def model_sensitivity(self, unknowns: PyTree[Array]) -> Array:
        return jnp.max(self._map(lambda p, u: p.model_sensitivity(u), unknowns))

    def views(self, unknowns: PyTree[Array]) -> dict[str, Array]:
        """`paths` (n_paths, E, N_model, D) and `params` {name: (n_paths, …)}."""
        return {"paths": unknowns["path"], "params": dict(unknowns["params"])}

    def uncertainty_views(self, unknowns: PyTree[Array], std: PyTree[Array]) -> dict[str, Array]:
        """`paths_std` (n_paths, E, N_model, D) and `params_std` {name: (n_paths, …)}."""
        return {"paths_std": std["path"], "params_std": dict(std["params"])}

    def forecast(
        self, unknowns: PyTree[Array], t1: float, n_times: int = 200, epoch: int = -1
    ) -> tuple[Float[Array, " n"], Float[Array, "n dim"]]:
        """Continue epoch `epoch` (default the last) past its window to `t1`, its inputs
        continuing: [`deepest.Assimilation.forecast`][] of that epoch."""
        i = range(self.n_epochs)[epoch]
        own = {k: (v if k == "params" else v[i]) for k, v in unknowns.items()}
        with jax.ensure_compile_time_eval():  # the epoch's times stay numbers under jit
            one = self.epoch(i)
        return one.forecast(own, t1, n_times)


def _check_alike(first: Assimilation, other: Assimilation, i: int) -> None:
    """A `ValueError` naming what epoch `i` does not share with epoch 0."""
    for name in (
        "dim",
        "steps_per_obs",
        "estimate",
        "param_ranges",
        "parameter_box",
        "state_ranges",
        "state_box",
    ):
        if getattr(first, name) != getattr(other, name):
            raise ValueError(
                f"Epoch {i} differs from epoch 0 in `{name}`: {getattr(other, name)!r} "
                f"against {getattr(first, name)!r}; epochs share them."
            )
    if not np.array_equal(np.asarray(first.rm), np.asarray(other.rm)):
        raise ValueError(f"Epoch {i} has another `rm` than epoch 0; epochs share R_m.")
    if type(first.discretisation) is not type(other.discretisation):
        raise ValueError(f"Epoch {i} has another discretisation than epoch 0.")
    a, b = jtu.tree_structure(first), jtu.tree_structure(other)
    if a != b:
        raise ValueError(
            f"Epoch {i} is not built like epoch 0 (another model, data layout, background "
            "or inputs): epochs share the model and differ only in their arrays."
        )
    for (where, x), y in zip(jtu.tree_flatten_with_path(first)[0], jtu.tree_leaves(other)):
        if np.shape(x) != np.shape(y):
            raise ValueError(
                f"Epoch {i}'s {jtu.keystr(where)} has shape {np.shape(y)}, epoch 0's "
                f"{np.shape(x)}: the epochs are batched, so they need the same number of "
                "observation times, components and input samples."
            )
