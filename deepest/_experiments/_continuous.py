"""The continuous-layer experiments of the notebooks (`notebooks/*.yaml`): a classifier
trained through the costate sweep, a continuous twin trained through its TPBVP, and
Lorenz-96 assimilation in continuous time. Each file may hold a `smoke` section: values
for keys of its other sections, used at smoke size (`config.at_smoke_size()`)."""

from typing import Any, Literal

import pydantic
from pydantic import Field

from .._boundary_value import MultipleShooting
from .._continuous import ContinuousNetwork
from .._misc import did_you_mean
from ._base import ConfigSection, default_of


def _solvers() -> dict:
    import diffrax

    from ..integrators import ClassicalRK4

    return {
        "RK4": ClassicalRK4(),
        "Heun": diffrax.Heun(),
        "Euler": diffrax.Euler(),
        "Dopri5": diffrax.Dopri5(),
        "Tsit5": diffrax.Tsit5(),
    }


SOLVERS = ("RK4", "Heun", "Euler", "Dopri5", "Tsit5")
"""The integrators a config names (`network.solver`): "RK4" is deepest.integrators.ClassicalRK4."""


class _Experiment(ConfigSection):
    smoke: dict[str, Any] = {}

    @pydantic.model_validator(mode="after")
    def _smoke_keys(self):
        keys = {
            key
            for name in type(self).model_fields
            if name != "smoke" and isinstance(getattr(self, name), ConfigSection)
            for key in type(getattr(self, name)).model_fields
        }
        for key in self.smoke:
            if key not in keys:
                raise ValueError(
                    f"Unknown key {key!r} in config.smoke.{did_you_mean(key, keys)} "
                    f"Valid keys: {', '.join(sorted(keys))}."
                )
        return self

    def at_smoke_size(self):
        """This config with the `smoke` section's values put in every section with that key."""
        raw = self.model_dump()
        for section in raw.values():
            if isinstance(section, dict):
                section.update({k: v for k, v in self.smoke.items() if k in section})
        return type(self).model_validate(raw)


class MethodConfig(ConfigSection):
    """`method`: [`deepest.MultipleShooting`][] (defaults: its own)."""

    n_segments: int = Field(default_of(MultipleShooting, "n_segments"), ge=1)
    steps_per_segment: int = Field(default_of(MultipleShooting, "steps_per_segment"), ge=1)

    def build(self) -> MultipleShooting:
        return MultipleShooting(**self.model_dump())


class SpiralsData(ConfigSection):
    n_train: int = Field(ge=1)
    n_test: int = Field(ge=1)
    turns: float = Field(gt=0)
    noise: float = Field(ge=0)
    seed: int = Field(0, ge=0)


class ContinuousNetworkConfig(ConfigSection):
    """`network`: a [`deepest.ContinuousNetwork`][] whose field is an MLP state_dim →
    hidden → state_dim, with linear encoder and decoder."""

    state_dim: int = Field(ge=1)
    hidden_width: int = Field(ge=1)
    hidden_layers: int = Field(ge=0)
    activation: Literal["tanh"] = "tanh"
    t1: float = Field(gt=0)
    n_steps: int = Field(ge=1)
    solver: Literal[SOLVERS] = "RK4"
    adjoint: Literal["costate", "reversible", "autodiff"] = default_of(ContinuousNetwork, "adjoint")
    seed: int = Field(0, ge=0)


class AdamConfig(ConfigSection):
    """`train`: Adam ([`deepest.fit`][] or [`deepest.train_continuous`][])."""

    learning_rate: float = Field(gt=0)
    steps: int = Field(ge=1)
    batch_size: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)


class ContinuousClassifierConfig(_Experiment):
    """`experiment: continuous_classifier` (notebook 04)."""

    experiment: Literal["continuous_classifier"] = "continuous_classifier"
    data: SpiralsData
    network: ContinuousNetworkConfig
    train: AdamConfig

    def build(self, adjoint: str | None = None) -> ContinuousNetwork:
        """The untrained network (with `adjoint` in place of the configured one)."""
        import equinox as eqx
        import jax.numpy as jnp
        import jax.random as jr

        net = self.network
        key_field, key_encoder, key_decoder = jr.split(jr.key(net.seed), 3)
        dim = net.state_dim
        field = eqx.nn.MLP(
            dim, dim, net.hidden_width, net.hidden_layers, activation=jnp.tanh, key=key_field
        )
        return ContinuousNetwork(
            field,
            net.t1,
            net.n_steps,
            solver=_solvers()[net.solver],
            adjoint=adjoint or net.adjoint,
            encoder=eqx.nn.Linear(2, dim, key=key_encoder),
            decoder=eqx.nn.Linear(dim, 2, key=key_decoder),
        )


class TeacherData(ConfigSection):
    dim: int = Field(ge=1)
    depth: float = Field(gt=0)
    n_pairs: int = Field(ge=1)
    teacher_scale: float = Field(gt=0)
    seed: int = Field(0, ge=0)


class ContinuousProblem(ConfigSection):
    rm: float = Field(gt=0)
    rf: float = Field(gt=0)
    fixed_start: bool = False


class ContinuousTwinConfig(_Experiment):
    """`experiment: continuous_twin` (notebook 05): a student field trained through the
    TPBVP of the continuous action ([`deepest.train_continuous`][])."""

    experiment: Literal["continuous_twin"] = "continuous_twin"
    data: TeacherData
    problem: ContinuousProblem
    method: MethodConfig = MethodConfig()
    train: AdamConfig

    def build(self) -> MultipleShooting:
        """The TPBVP method."""
        return self.method.build()


class L96ContinuousData(ConfigSection):
    dim: int = Field(ge=1)
    forcing: float
    n_times: int = Field(ge=2)
    dt: float = Field(gt=0)
    observed: list[pydantic.NonNegativeInt]
    noise: float = Field(gt=0)
    seed: int = Field(0, ge=0)


class RmProblem(ConfigSection):
    rm: float = Field(gt=0)


class Continuation(ConfigSection):
    rf0: float = Field(gt=0)
    alpha: float = Field(gt=1)
    n_beta: int = Field(ge=1)


class Lorenz96ContinuousConfig(_Experiment):
    """`experiment: lorenz96_continuous` (notebook 05): Lorenz-96 assimilation in continuous
    time, continued in R_f = rf0·alpha^β ([`deepest.anneal_tpbvp`][])."""

    experiment: Literal["lorenz96_continuous"] = "lorenz96_continuous"
    data: L96ContinuousData
    problem: RmProblem
    anneal: Continuation
    method: MethodConfig = MethodConfig()

    @pydantic.model_validator(mode="after")
    def _observed(self):
        bad = [i for i in self.data.observed if i >= self.data.dim]
        if bad:
            raise ValueError(
                f"`data.observed` has index {bad[0]}, out of range [0, {self.data.dim})."
            )
        return self

    def build(self):
        """`(problem, rfs, method, data)`: the [`deepest.ContinuousAssimilation`][] (R_f = 1),
        the R_f's of the continuation, the method and the twin data."""
        import jax.numpy as jnp
        import jax.random as jr

        from .._assimilation import ContinuousAssimilation
        from .._data import twin_experiment
        from ..models import Lorenz96

        d, a = self.data, self.anneal
        model = Lorenz96(d.forcing)
        data = twin_experiment(model, d.dim, d.n_times, d.dt, d.observed, d.noise, jr.key(d.seed))
        problem = ContinuousAssimilation(model, data, rm=self.problem.rm, rf=1.0)
        rfs = a.rf0 * a.alpha ** jnp.arange(float(a.n_beta))
        return problem, rfs, self.method.build(), data


CONTINUOUS_EXPERIMENTS: dict[str, type[_Experiment]] = {
    "continuous_classifier": ContinuousClassifierConfig,
    "continuous_twin": ContinuousTwinConfig,
    "lorenz96_continuous": Lorenz96ContinuousConfig,
}
"""The notebooks' continuous-layer experiments, by the name in `experiment`."""
