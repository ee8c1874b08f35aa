r"""Symplectic one-step schemes for Hamiltonian systems, as diffrax solvers.

The state is the pair `(x, p)` of positions and canonical momenta (two pytrees of the same
structure, shapes and dtypes), and the term's vector field returns `(ẋ, ṗ)`:

$$ẋ = ∂H/∂p(t, x, p), \qquad ṗ = -∂H/∂x(t, x, p).$$

The schemes never see `H`, only this vector field, so they apply to any Hamiltonian, separable
or not. Their implicit equations are solved by Newton's method from optimistix on scaled
increments (so the tolerances are relative to `1 + |y_0|` componentwise), to a tolerance set
from the floating-point precision of the state's dtype. Derivatives of a step go through the
implicit function theorem (optimistix's `ImplicitAdjoint`): they are the exact derivatives of
the discrete map at the computed root, whatever the number of Newton iterations.

All schemes are fixed-step: they give no local error estimate, so diffrax refuses them with an
adaptive step-size controller. Use `stepsize_controller=diffrax.ConstantStepSize()` (the
default) with `dt0`, or `diffrax.StepTo(ts)`.

Reference: E. Hairer, C. Lubich, G. Wanner, *Geometric Numerical Integration*, 2nd ed.,
Springer 2006 (HLW below), chapters II.1, VI.3–VI.4.
"""

import abc
import functools
from collections.abc import Callable
from typing import ClassVar, Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from equinox import AbstractVar
from jaxtyping import Array, PyTree

# Default Newton tolerance, in units of the machine epsilon of the state's dtype.
_DEFAULT_TOL_EPS = 10.0

_Pair = tuple[PyTree[Array], PyTree[Array]]


def _check_pair(y: _Pair, what: str) -> None:
    """Raise at trace time unless `y` is a pair `(x, p)` of matching float pytrees."""
    if not (isinstance(y, tuple) and len(y) == 2):
        raise ValueError(
            f"The symplectic solvers need the {what} to be a pair `(x, p)` of positions and "
            f"momenta (a tuple of two pytrees of arrays); got {type(y).__name__}."
        )
    x, p = y
    x_struct = jax.eval_shape(lambda: x)
    p_struct = jax.eval_shape(lambda: p)
    if jtu.tree_structure(x_struct) != jtu.tree_structure(p_struct):
        raise ValueError(
            f"The positions and momenta of the {what} must have the same pytree structure; "
            f"got {jtu.tree_structure(x_struct)} and {jtu.tree_structure(p_struct)}."
        )
    for xs, ps in zip(jtu.tree_leaves(x_struct), jtu.tree_leaves(p_struct), strict=True):
        if xs.shape != ps.shape:
            raise ValueError(
                f"The positions and momenta of the {what} must have the same shapes, one "
                f"momentum per position; got x of shape {xs.shape} and p of shape {ps.shape}."
            )
        if not jnp.issubdtype(xs.dtype, jnp.floating) or xs.dtype != ps.dtype:
            raise TypeError(
                f"The positions and momenta of the {what} must be arrays of one floating "
                f"dtype; got {xs.dtype} and {ps.dtype}."
            )


def _check_field(f0: _Pair, y0: _Pair) -> None:
    """Raise at trace time unless the vector field's value `(ẋ, ṗ)` matches the state."""
    _check_pair(f0, "vector field's value")
    f_struct = jax.eval_shape(lambda: f0)
    y_struct = jax.eval_shape(lambda: y0)
    if jtu.tree_structure(f_struct) != jtu.tree_structure(y_struct) or any(
        (fs.shape, fs.dtype) != (ys.shape, ys.dtype)
        for fs, ys in zip(jtu.tree_leaves(f_struct), jtu.tree_leaves(y_struct), strict=True)
    ):
        raise ValueError(
            "The vector field must return `(ẋ, ṗ)` with the structure, shapes and dtypes of "
            f"the state `(x, p)`; got {f_struct} for the state {y_struct}."
        )


def _eps(y: PyTree[Array]) -> float:
    """The machine epsilon of the least precise leaf of `y`."""
    return max(float(jnp.finfo(leaf.dtype).eps) for leaf in jtu.tree_leaves(y))


def _scale(y: PyTree[Array]) -> PyTree[Array]:
    # Newton works on increments divided by 1 + |y|, so that its absolute and relative
    # tolerances mean the same for states of any magnitude. The scale is a constant of the
    # implicit equation (its root does not depend on it), hence the stop_gradient.
    return jtu.tree_map(lambda a: jax.lax.stop_gradient(1 + jnp.abs(a)), y)


def _add(a, b):
    return jtu.tree_map(lambda u, v: u + v, a, b)


def _axpy(alpha, x, y):
    """`y + alpha * x` leafwise, with `alpha` a Python float."""
    return jtu.tree_map(lambda u, v: v + alpha * u, x, y)


def _mul(a, b):
    return jtu.tree_map(lambda u, v: u * v, a, b)


def _div(a, b):
    return jtu.tree_map(lambda u, v: u / v, a, b)


def _sub(a, b):
    return jtu.tree_map(lambda u, v: u - v, a, b)


class AbstractSymplecticSolver(dfx.AbstractSolver):
    """Base of the symplectic solvers of `deepest.integrators`.

    A diffrax solver for a single term whose state is the pair `(x, p)` and whose vector
    field returns `(ẋ, ṗ)`. Fixed-step only (no error estimate). Implicit equations are
    solved with `optimistix.Newton` to `rtol`/`atol` (default `10·eps` of the state's dtype),
    giving up after `root_find_max_steps` iterations; a failed solve makes the step return a
    failed `diffrax.RESULTS` code, so `diffeqsolve(..., throw=True)` raises and `throw=False`
    returns it in `solution.result`.
    """

    term_structure: ClassVar = dfx.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., dfx.LocalLinearInterpolation]] = (
        dfx.LocalLinearInterpolation
    )

    rtol: AbstractVar[float | None]
    atol: AbstractVar[float | None]
    root_find_max_steps: AbstractVar[int]

    def init(self, terms, t0, t1, y0, args) -> Array:
        del terms, args
        _check_pair(y0, "state")
        # diffeqsolve calls `init` with t1 = min(t0 + dt0, t1), so an empty first step means
        # dt0 = 0, which diffrax itself only reports as "max_steps reached". The flag is the
        # solver state and `step` raises on it: an `error_if` here, whose value nothing
        # uses, would be removed by the compiler. (A solve with t0 == t1 makes no step and
        # is not refused. Negative dt0 diffrax rejects itself.)
        return jnp.asarray(t1 <= t0)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        y0 = _check_step(t0, t1, y0, solver_state)
        y1, result = self._step(terms, t0, t1, y0, args)
        return y1, None, dict(y0=y0, y1=y1), solver_state, result

    @abc.abstractmethod
    def _step(self, terms, t0, t1, y0, args) -> tuple[_Pair, dfx.RESULTS]:
        """One step from the checked state `y0`: the state at `t1` and its result."""

    def _root_finder(self, y: PyTree[Array]) -> optx.Newton:
        eps = _eps(y)
        rtol = _DEFAULT_TOL_EPS * eps if self.rtol is None else self.rtol
        atol = _DEFAULT_TOL_EPS * eps if self.atol is None else self.atol
        return optx.Newton(rtol=rtol, atol=atol)

    def _solve(self, residual, guess, args, like):
        """Newton on `residual(w, args) = 0` from `guess`; returns the root and the result."""
        sol = optx.root_find(
            residual,
            self._root_finder(like),
            guess,
            args,
            max_steps=self.root_find_max_steps,
            throw=False,
        )
        return sol.value, dfx.RESULTS.promote(sol.result)

    def __check_init__(self):
        if self.root_find_max_steps < 1:
            raise ValueError(
                f"`root_find_max_steps` must be a positive integer; got {self.root_find_max_steps}."
            )
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(
                    f"`{name}` must be positive (or None for 10·eps of the state's dtype); "
                    f"got {value}."
                )


def _check_step(t0, t1, y0, empty_first_step) -> _Pair:
    """Trace-time check of the state; run-time checks that the step is positive.

    Inside `diffeqsolve` steps never go backward (diffrax reverses time itself for t1 < t0,
    and rejects dt0 of the wrong sign), so `t1 < t0` catches direct calls of `step`. A zero
    step is allowed there: it is the identity, and diffrax makes zero-length steps in the
    finished lanes of a vmapped solve. `empty_first_step` is the flag set by `init` (None
    when `step` is called without it). Returns `y0`, which the checks are threaded on.
    """
    _check_pair(y0, "state")
    y0 = eqx.error_if(
        y0,
        t1 < t0,
        "A symplectic step must go forward in time (t1 >= t0); to integrate backward, use "
        "`diffrax.diffeqsolve` with t1 < t0 and a negative dt0.",
    )
    if empty_first_step is None:
        return y0
    return eqx.error_if(
        y0,
        empty_first_step,
        "The step size must be positive: `diffeqsolve` was called with dt0 = 0. The "
        "symplectic solvers are fixed-step; pass dt0 > 0 (or dt0 < 0 with t1 < t0 to "
        "integrate backward).",
    )


# -- symplectic Euler ------------------------------------------------------------------


def _implicit_half(terms, ta, tb, y0, args, solver, update: Literal["x", "p"], f0):
    """One symplectic Euler step over [ta, tb], implicit in the variable updated first.

    `update="p"`: P = p0 + h ṗ(ta, x0, P), then x1 = x0 + h ẋ(ta, x0, P)  (HLW VI.(3.1)).
    `update="x"`: X = x0 + h ẋ(tb, X, p0), then p1 = p0 + h ṗ(tb, X, p0)  (its adjoint).
    `f0` is the vector field at the step's start, used for the Euler predictor.
    """
    x0, p0 = y0
    control = terms.contr(ta, tb)
    if update == "p":
        t_eval, first0, first_index = ta, p0, 1
    else:
        t_eval, first0, first_index = tb, x0, 0

    def pair(first):
        return (x0, first) if update == "p" else (first, p0)

    def increment(first, vf_args):
        terms_, args_ = vf_args
        return terms_.vf_prod(t_eval, pair(first), args_, control)

    if solver is None:
        # Separable H: the right-hand side does not depend on the implicit variable.
        first = _add(first0, increment(first0, (terms, args))[first_index])
        result = dfx.RESULTS.successful
    else:
        scale = _scale(first0)

        def residual(w, res_args):
            vf_args, first0_, scale_ = res_args
            first = _add(first0_, _mul(scale_, w))
            return _sub(w, _div(increment(first, vf_args)[first_index], scale_))

        guess = _div(terms.prod(f0, control)[first_index], scale)
        w, result = solver._solve(residual, guess, ((terms, args), first0, scale), first0)
        first = _add(first0, _mul(scale, w))
    second = increment(first, (terms, args))[1 - first_index]
    if update == "p":
        y1 = (_add(x0, second), first)
    else:
        y1 = (first, _add(p0, second))
    return y1, result


class SymplecticEuler(AbstractSymplecticSolver):
    r"""Symplectic Euler, order 1, in either of its two variants (HLW VI.3, Theorem 3.3).

    With `h = t1 − t0` and the vector field `(ẋ, ṗ) = (f(t, x, p), g(t, x, p))`:

    - `variant="p_first"` (HLW VI.(3.1)), implicit in the momentum:
      $p_1 = p_0 + h\,g(t_0, x_0, p_1)$, then explicitly $x_1 = x_0 + h\,f(t_0, x_0, p_1)$.
    - `variant="x_first"` (its adjoint), implicit in the position:
      $x_1 = x_0 + h\,f(t_1, x_1, p_0)$, then explicitly $p_1 = p_0 + h\,g(t_1, x_1, p_0)$.

    For separable `H = T(p) + V(x)` both are explicit (Newton stops after one iteration); for
    non-separable `H` each step solves one implicit equation of the size of `x` by Newton.
    The two variants are adjoint to each other; their composition with half steps is
    Störmer–Verlet ([`deepest.integrators.StormerVerlet`][]).

    **Arguments:**

    - `variant`: `"p_first"` or `"x_first"`, which variable is updated (implicitly) first.
    - `rtol`, `atol`: Newton tolerances on the increment scaled by `1 + |y_0|`; None (the
      default) means `10·eps` of the state's dtype.
    - `root_find_max_steps`: Newton iterations allowed before the step is flagged as failed.

    **Example:**

    ```python
    import diffrax as dfx, jax.numpy as jnp
    from deepest.integrators import SymplecticEuler

    field = lambda t, y, args: (y[1], -jnp.sin(y[0]))        # pendulum
    sol = dfx.diffeqsolve(dfx.ODETerm(field), SymplecticEuler("p_first"), t0=0.0, t1=10.0,
                          dt0=0.01, y0=(jnp.array([1.0]), jnp.array([0.0])))
    ```
    """

    variant: Literal["p_first", "x_first"] = eqx.field(default="p_first", static=True)
    rtol: float | None = eqx.field(default=None, static=True)
    atol: float | None = eqx.field(default=None, static=True)
    root_find_max_steps: int = eqx.field(default=20, static=True)

    def __check_init__(self):
        if self.variant not in ("p_first", "x_first"):
            raise ValueError(
                f'`variant` must be "p_first" (implicit in p) or "x_first" (implicit in x); '
                f"got {self.variant!r}."
            )

    def order(self, terms):
        del terms
        return 1

    def _step(self, terms, t0, t1, y0, args):
        f0 = terms.vf(t0, y0, args)
        _check_field(f0, y0)
        update = "p" if self.variant == "p_first" else "x"
        return _implicit_half(terms, t0, t1, y0, args, self, update, f0)


class StormerVerlet(AbstractSymplecticSolver):
    r"""Störmer–Verlet (leapfrog), order 2, symmetric (HLW I.1.4, VI.3 eq. (3.4)).

    With `h = t1 − t0`, `t½ = t0 + h/2` and `(ẋ, ṗ) = (f, g)`:

    $$p_{1/2} = p_0 + \tfrac h2\,g(t_0, x_0, p_{1/2}),\quad
      x_1 = x_0 + \tfrac h2\,\big(f(t_0, x_0, p_{1/2}) + f(t_1, x_1, p_{1/2})\big),\quad
      p_1 = p_{1/2} + \tfrac h2\,g(t_1, x_1, p_{1/2}),$$

    the composition of a half step of symplectic Euler `"p_first"` with a half step of
    `"x_first"`.

    - `separable=True` (default): requires a **separable** Hamiltonian `H = T(p) + V(x)`,
      i.e. `ẋ` depends on `p` only and `ṗ` on `x` only. Then the scheme is explicit (the
      familiar kick–drift–kick leapfrog, two evaluations of the field per step) and no Newton
      solve is made. Applied to a non-separable field it silently computes a different,
      non-symplectic map: use `separable=False` there.
    - `separable=False`: the generalised Störmer–Verlet scheme for non-separable `H`; the
      first equation is implicit in `p_{1/2}`, the second in `x_1`; each is solved by Newton.

    **Arguments:**

    - `separable`: whether the Hamiltonian is separable (see above).
    - `rtol`, `atol`, `root_find_max_steps`: as [`deepest.integrators.SymplecticEuler`][]
      (unused when `separable=True`).

    **Example:**

    ```python
    field = lambda t, y, args: (y[1], -jnp.sin(y[0]))        # H = p²/2 − cos x
    sol = dfx.diffeqsolve(dfx.ODETerm(field), StormerVerlet(), t0=0.0, t1=10.0, dt0=0.01,
                          y0=(jnp.array([1.0]), jnp.array([0.0])))
    ```
    """

    separable: bool = eqx.field(default=True, static=True)
    rtol: float | None = eqx.field(default=None, static=True)
    atol: float | None = eqx.field(default=None, static=True)
    root_find_max_steps: int = eqx.field(default=20, static=True)

    def order(self, terms):
        del terms
        return 2

    def _step(self, terms, t0, t1, y0, args):
        f0 = terms.vf(t0, y0, args)
        _check_field(f0, y0)
        newton = None if self.separable else self
        t_half = t0 + 0.5 * (t1 - t0)
        y_half, result1 = _implicit_half(terms, t0, t_half, y0, args, newton, "p", f0)
        # The predictor of the second half: the field at the half step's start, reusing f0
        # (only its x-part is used, and only as a Newton starting point).
        y1, result2 = _implicit_half(terms, t_half, t1, y_half, args, newton, "x", f0)
        result = dfx.RESULTS.where(result1 == dfx.RESULTS.successful, result2, result1)
        return y1, result


# -- Gauss–Legendre collocation ---------------------------------------------------------


@functools.cache
def gauss_legendre_tableau(
    n_stages: int,
) -> tuple[tuple[tuple[float, ...], ...], tuple[float, ...], tuple[float, ...]]:
    r"""The Butcher tableau `(a, b, c)` of the `n_stages`-stage Gauss–Legendre method.

    `c` are the zeros of the shifted Legendre polynomial `P_s(2c − 1)`, `b` the Gauss
    quadrature weights on [0, 1], and `a` is fixed by the simplifying assumption C(s):
    $\sum_j a_{ij} c_j^{k-1} = c_i^k / k$ for k = 1..s (HLW II.1.3, Table 1.4 for s = 2:
    c = ½ ∓ √3/6, a = [[¼, ¼ − √3/6], [¼ + √3/6, ¼]], b = [½, ½]).
    Computed in float64 and returned as Python floats.
    """
    nodes, weights = np.polynomial.legendre.leggauss(n_stages)
    c = (nodes + 1) / 2
    b = weights / 2
    powers = np.arange(1, n_stages + 1)
    vandermonde = c[None, :] ** (powers[:, None] - 1)  # [k, j] = c_j^(k-1)
    rhs = c[:, None] ** powers[None, :] / powers[None, :]  # [i, k] = c_i^k / k
    a = np.linalg.solve(vandermonde, rhs.T).T  # a V = rhs with V[j, k] = c_j^(k-1)
    return (
        tuple(tuple(float(v) for v in row) for row in a),
        tuple(float(v) for v in b),
        tuple(float(v) for v in c),
    )


def _collocation_step(solver, tableau, terms, t0, t1, y0, args):
    """One step of the implicit Runge–Kutta method `tableau` (Gauss–Legendre here).

    Unknowns: the stage increments Z_i = Y_i − y0, scaled by 1 + |y0|, solving
    Z_i = Σ_j a_ij h F(t0 + c_j h, y0 + Z_j); then y1 = y0 + Σ_i b_i h F(t0 + c_i h, Y_i).
    """
    a, b, c = tableau
    control = terms.contr(t0, t1)
    h = t1 - t0
    f0 = terms.vf(t0, y0, args)
    _check_field(f0, y0)
    scale = _scale(y0)

    def stage_increments(z, vf_args):
        terms_, args_, y0_ = vf_args
        return [
            terms_.vf_prod(t0 + ci * h, _add(y0_, zi), args_, control)
            for ci, zi in zip(c, z, strict=True)
        ]

    def residual(w, res_args):
        vf_args, scale_ = res_args
        z = [_mul(scale_, wi) for wi in w]
        k = stage_increments(z, vf_args)
        out = []
        for row, wi in zip(a, w, strict=True):
            combo = jtu.tree_map(jnp.zeros_like, wi)
            for aij, kj in zip(row, k, strict=True):
                combo = _axpy(aij, kj, combo)
            out.append(_sub(wi, _div(combo, scale_)))
        return tuple(out)

    # Predictor: the explicit Euler increments to the stage times.
    hf0 = _div(terms.prod(f0, control), scale)
    guess = tuple(jtu.tree_map(functools.partial(jnp.multiply, ci), hf0) for ci in c)
    w, result = solver._solve(residual, guess, ((terms, args, y0), scale), y0)
    z = [_mul(scale, wi) for wi in w]
    # y1 from the stage field values (one more evaluation per stage) rather than from
    # d = b A⁻¹ applied to the increments, which would amplify their rounding by |A⁻¹|.
    k = stage_increments(z, (terms, args, y0))
    y1 = y0
    for bi, ki in zip(b, k, strict=True):
        y1 = _axpy(bi, ki, y1)
    return y1, result


class ImplicitMidpoint(AbstractSymplecticSolver):
    r"""The implicit midpoint rule, order 2, symmetric and symplectic (HLW I.1.2, VI.3).

    $$y_1 = y_0 + h\,F\big(t_0 + \tfrac h2,\ \tfrac12 (y_0 + y_1)\big),\qquad y = (x, p),$$

    the 1-stage Gauss–Legendre method (tableau a = ½, b = 1, c = ½). It preserves every
    quadratic invariant exactly (so the energy of a linear system up to rounding). Each
    step solves one implicit equation of the size of `(x, p)` by Newton.

    **Arguments:** `rtol`, `atol`, `root_find_max_steps` as
    [`deepest.integrators.SymplecticEuler`][].

    **Example:**

    ```python
    field = lambda t, y, args: (y[1] * (1 + y[0] ** 2), -y[0] * (1 + y[1] ** 2))
    sol = dfx.diffeqsolve(dfx.ODETerm(field), ImplicitMidpoint(), t0=0.0, t1=10.0, dt0=0.1,
                          y0=(jnp.array([1.0]), jnp.array([0.0])))
    ```
    """

    rtol: float | None = eqx.field(default=None, static=True)
    atol: float | None = eqx.field(default=None, static=True)
    root_find_max_steps: int = eqx.field(default=20, static=True)

    def order(self, terms):
        del terms
        return 2

    def _step(self, terms, t0, t1, y0, args):
        return _collocation_step(self, gauss_legendre_tableau(1), terms, t0, t1, y0, args)


class SymplecticGaussLegendre(AbstractSymplecticSolver):
    r"""The s-stage Gauss–Legendre collocation method, order 2s, symplectic (HLW II.1.3, VI.4).

    $$Y_i = y_0 + h \sum_j a_{ij} F(t_0 + c_j h, Y_j),\qquad
      y_1 = y_0 + h \sum_i b_i F(t_0 + c_i h, Y_i),$$

    with the tableau of [`deepest.integrators.gauss_legendre_tableau`][]; for the default
    `n_stages=2` (order 4): c = ½ ∓ √3/6, a = [[¼, ¼ − √3/6], [¼ + √3/6, ¼]], b = [½, ½].
    It satisfies b_i a_ij + b_j a_ji = b_i b_j, hence is symplectic (HLW VI, Theorem 4.3), and
    preserves quadratic invariants. Each step solves one implicit system of `n_stages` times
    the size of `(x, p)` by Newton. `n_stages=1` is the implicit midpoint rule.

    **Arguments:**

    - `n_stages`: number of stages s ≥ 1 (order 2s).
    - `rtol`, `atol`, `root_find_max_steps`: as [`deepest.integrators.SymplecticEuler`][].

    **Example:**

    ```python
    field = lambda t, y, args: (y[1] * (1 + y[0] ** 2), -y[0] * (1 + y[1] ** 2))
    sol = dfx.diffeqsolve(dfx.ODETerm(field), SymplecticGaussLegendre(), t0=0.0, t1=10.0, dt0=0.1,
                          y0=(jnp.array([1.0]), jnp.array([0.0])))
    ```
    """

    n_stages: int = eqx.field(default=2, static=True)
    rtol: float | None = eqx.field(default=None, static=True)
    atol: float | None = eqx.field(default=None, static=True)
    root_find_max_steps: int = eqx.field(default=20, static=True)

    def __check_init__(self):
        if not (isinstance(self.n_stages, int) and self.n_stages >= 1):
            raise ValueError(f"`n_stages` must be an integer ≥ 1; got {self.n_stages!r}.")

    def order(self, terms):
        del terms
        return 2 * self.n_stages

    def _step(self, terms, t0, t1, y0, args):
        return _collocation_step(
            self, gauss_legendre_tableau(self.n_stages), terms, t0, t1, y0, args
        )
