"""Boundary-value problems of Hamiltonian type for the pair y = (x, p)."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PyTree, Scalar

from .._misc import Pair, default_float, is_concrete, positive_int


class AbstractBoundaryValueProblem(eqx.Module):
    """A boundary-value problem for the pair y = (x, p), both of shape (dim,).

    Subclasses provide:

    - `dim`: the size of x (and of p).
    - `vector_field(t, y, args) -> (ẋ, ṗ)`: a diffrax vector field on the pair.
    - `node_times()`: the times [t_0, τ_1, …, τ_{K−1}, t_1] (increasing), the interior ones
      being where `jump` acts. Their number is static; their values may be traced.
    - `boundary_residual(y0, y1)`: the 2·dim residuals of the boundary conditions.

    and may override `jump(k, y)` (the map at interior node k; default: none),
    `initial_guess(t)` (default: zeros) and `hamiltonian(t, x, p)`.
    """

    dim: eqx.AbstractVar[int]

    @abc.abstractmethod
    def vector_field(self, t: ArrayLike, y: Pair, args: PyTree) -> Pair:
        """The canonical equations (ẋ, ṗ) at time `t`."""

    @abc.abstractmethod
    def node_times(self) -> Float[Array, " n_nodes"]:
        """The interval ends and the interior jump times, increasing."""

    @abc.abstractmethod
    def boundary_residual(self, y0: Pair, y1: Pair) -> Float[Array, " 2*dim"]:
        """The boundary conditions b(y(t_0), y(t_1)), zero at a solution."""

    def jump(self, k: Int[ArrayLike, ""], y: Pair) -> Pair:
        """The state just after interior node `k` (1 ≤ k ≤ K−1), from the state just before."""
        del k
        return y

    def initial_guess(self, t: ArrayLike) -> Pair:
        """The default starting guess y(t) for Newton's method."""
        dtype = jnp.result_type(self.node_times())
        zero = jnp.zeros(self.dim, dtype) + 0 * jnp.asarray(t, dtype)
        return zero, zero

    def hamiltonian(self, t: ArrayLike, x: Array, p: Array) -> Scalar:
        """The Hamiltonian 𝓗(t, x, p), where the problem knows one."""
        raise NotImplementedError(f"{type(self).__name__} does not define a Hamiltonian.")


class AbstractAnnealableBoundaryValueProblem(AbstractBoundaryValueProblem):
    """A boundary-value problem with a model-error weight `rf` (R_f > 0, an array field),
    the weight that [`deepest.anneal_tpbvp`][] increases from solve to solve (e.g.
    [`deepest.ContinuousAssimilation`][])."""

    rf: eqx.AbstractVar[Float[Array, "*rf"]]


class BoundaryValueProblem(AbstractBoundaryValueProblem):
    """A user-specified boundary-value problem on the pair y = (x, p).

    **Arguments:**

    - `vector_field`: `f(t, (x, p), args) -> (ẋ, ṗ)`, e.g. from [`deepest.hamiltonian_field`][]
      or [`deepest.euler_lagrange`][] (then p stands for ẋ).
    - `boundary`: `b((x0, p0), (x1, p1)) -> residuals` of shape (2·dim,).
    - `t0`, `t1`: the interval, t0 < t1.
    - `dim`: the size of x.
    - `jump_times`: optional interior times τ_k (increasing, inside (t0, t1)).
    - `jump`: `jump(k, (x, p)) -> (x, p)` at τ_k, k = 1, 2, … (required with `jump_times`).
    - `guess`: optional default guess `t -> (x, p)`.
    - `hamiltonian`: optional `H(t, x, p)`, for diagnostics.

    **Example:**

        field = deepest.hamiltonian_field(lambda t, x, p: 0.5 * (p @ p) + jnp.cos(x).sum())
        bc = lambda y0, y1: jnp.concatenate([y0[0] - 0.5, y1[0] - 1.0])
        problem = deepest.BoundaryValueProblem(field, bc, 0.0, 1.0, dim=1)
        sol = deepest.solve_tpbvp(problem)
    """

    field: Callable
    boundary: Callable
    t0: Float[Array, ""]
    t1: Float[Array, ""]
    jump_times: Float[Array, " n_jumps"]
    jump_map: Callable | None
    guess: Callable | None
    hamiltonian_fn: Callable | None
    dim: int = eqx.field(static=True)

    def __init__(
        self,
        vector_field: Callable,
        boundary: Callable,
        t0: ArrayLike,
        t1: ArrayLike,
        dim: int,
        *,
        jump_times: ArrayLike = (),
        jump: Callable | None = None,
        guess: Callable | None = None,
        hamiltonian: Callable | None = None,
    ):
        dim = positive_int(dim, "dim")
        dtype = default_float()
        t0 = jnp.asarray(t0, dtype)
        t1 = jnp.asarray(t1, dtype)
        jump_times = jnp.asarray(jump_times, dtype).reshape(-1)
        if is_concrete((t0, t1, jump_times)):
            nodes = np.concatenate([[float(t0)], np.asarray(jump_times), [float(t1)]])
            if not np.all(np.isfinite(nodes)):
                raise ValueError("The interval ends and jump times must be finite.")
            if not float(t1) > float(t0):
                raise ValueError(f"Need t0 < t1 (a positive interval); got t0={t0}, t1={t1}.")
            if np.any(np.diff(nodes) <= 0):
                raise ValueError("`jump_times` must increase strictly and lie inside (t0, t1).")
        if jump_times.size > 0 and jump is None:
            raise ValueError("Pass `jump`, the map applied at each of the `jump_times`.")
        self.field = vector_field
        self.boundary = boundary
        self.t0 = t0
        self.t1 = t1
        self.jump_times = jump_times
        self.jump_map = jump
        self.guess = guess
        self.hamiltonian_fn = hamiltonian
        self.dim = dim
        zero = jnp.zeros(self.dim, dtype)
        out = jax.eval_shape(boundary, (zero, zero), (zero, zero))
        if not hasattr(out, "shape") or out.shape != (2 * self.dim,):
            raise ValueError(
                f"`boundary` must return 2·dim = {2 * self.dim} residuals (one array of shape "
                f"({2 * self.dim},)); got {getattr(out, 'shape', out)}."
            )
        f_out = jax.eval_shape(vector_field, t0, (zero, zero), None)
        if jtu.tree_structure(f_out) != jtu.tree_structure((0, 0)) or any(
            leaf.shape != (self.dim,) for leaf in jtu.tree_leaves(f_out)
        ):
            raise ValueError(
                f"`vector_field(t, (x, p), args)` must return a pair (ẋ, ṗ) of shape "
                f"({self.dim},) each; got {f_out}."
            )

    def vector_field(self, t, y, args):
        return self.field(t, y, args)

    def node_times(self):
        return jnp.concatenate([self.t0[None], self.jump_times, self.t1[None]])

    def boundary_residual(self, y0, y1):
        return self.boundary(y0, y1)

    def jump(self, k, y):
        if self.jump_map is None:
            return y
        return self.jump_map(k, y)

    def initial_guess(self, t):
        if self.guess is None:
            return super().initial_guess(t)
        return self.guess(t)

    def hamiltonian(self, t, x, p):
        if self.hamiltonian_fn is None:
            return super().hamiltonian(t, x, p)
        return self.hamiltonian_fn(t, x, p)
