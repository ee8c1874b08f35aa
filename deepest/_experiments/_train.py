"""The train experiments of "deepest learning": a network trained by annealing and by
backpropagation (Adam with costate gradients) on the same pairs.

- `twin_network`: pairs from a generator network ([`deepest.twin_generator`][]), learned by
  a deeper-than-wide network.
- `bar_images`: 5×5 bar images in 4 classes ([`deepest.bar_images`][]).
- `depth_resolution`: one smooth flow map ([`deepest.FlowMap`][]) learned by residual
  networks x + h·F(x; W), h = T/L, for several depths L, with R_f from
  [`deepest.discrete_weights`][] so that every depth approximates one continuous action.
"""

import time
from typing import Any, Literal

import numpy as np
import pydantic
from pydantic import Field

from .._annealing import AnnealSchedule
from .._assimilation import discrete_weights, training
from .._data import (
    TWIN_VARIANTS,
    FlowMap,
    bar_images,
    check_bar_settings,
    noisy_pairs,
    twin_generator,
)
from .._misc import did_you_mean
from .._networks import LayeredNetwork, fit
from ._anneal import RunSection
from ._base import ConfigSection, default_of, interval, library_check


def _activations() -> dict:
    import jax
    import jax.numpy as jnp

    return {
        "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid,
        "identity": lambda z: z,
        "relu": jax.nn.relu,
    }


Activation = Literal["tanh", "sigmoid", "identity", "relu"]
Init = Literal["normal", "uniform"]


class _Sizes(ConfigSection):
    n_train: int = Field(ge=1)
    n_validation: int = Field(200, ge=1)
    n_test: int = Field(1000, ge=1)
    seed: int = Field(0, ge=0)


class TwinNetworkData(_Sizes):
    """`data` of `twin_network`: the generator ([`deepest.twin_generator`][]) and the pairs."""

    variant: str = default_of(twin_generator, "variant")
    width: int = Field(default_of(twin_generator, "width"), ge=1)
    generator_layers: int = Field(default_of(twin_generator, "n_layers"), ge=2)
    gain: float = Field(default_of(twin_generator, "gain"), gt=0)
    noise: float = Field(0.005, gt=0)
    n_train: int = Field(10, ge=1)

    @pydantic.field_validator("variant")
    @classmethod
    def _known(cls, name):
        if name not in TWIN_VARIANTS:
            raise ValueError(
                f"`data.variant` must be one of {', '.join(map(repr, TWIN_VARIANTS))}; "
                f"got {name!r}.{did_you_mean(name, TWIN_VARIANTS)}"
            )
        return name


class BarImagesData(_Sizes):
    """`data` of `bar_images` ([`deepest.bar_images`][])."""

    size: int = Field(default_of(bar_images, "size"), ge=1)
    positions: str = default_of(bar_images, "positions")
    pixel_noise: float = Field(default_of(bar_images, "noise"), ge=0)
    n_train: int = Field(40, ge=1)

    @pydantic.model_validator(mode="after")
    def _images(self):
        library_check(
            "data", ("size", "positions"), lambda: check_bar_settings(self.size, self.positions)
        )
        return self


class FlowMapData(_Sizes):
    """`data` of `depth_resolution`: a [`deepest.FlowMap`][] and inputs uniform in
    `input_range`."""

    dim: int = Field(2, ge=1)
    horizon: float = Field(default_of(FlowMap, "horizon"), gt=0)
    scale: float = Field(default_of(FlowMap, "scale"), gt=0)
    noise: float = Field(0.01, gt=0)
    input_range: list[float] = [-1.0, 1.0]
    n_train: int = Field(20, ge=1)

    @pydantic.field_validator("input_range")
    @classmethod
    def _interval(cls, value):
        interval("data.input_range", value)
        return value


class NetworkConfig(ConfigSection):
    """`network`: a [`deepest.LayeredNetwork`][] of widths N_0, …, N_L."""

    widths: list[int] = [10] * 20
    activation: Activation = "tanh"
    output_activation: Activation = "tanh"
    use_bias: bool = False
    init: Init = "normal"
    seed: int = Field(3, ge=0)

    @pydantic.field_validator("widths")
    @classmethod
    def _widths(cls, widths):
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError("`network.widths` must list N_0, …, N_L (at least two widths).")
        return widths


class BarNetworkConfig(NetworkConfig):
    widths: list[int] = [25, 30, 4]
    activation: Activation = "sigmoid"
    output_activation: Activation = "sigmoid"
    use_bias: bool = True


class ResidualNetworkConfig(ConfigSection):
    """`network` of `depth_resolution`: residual networks of the depths `depths`."""

    depths: list[int] = [5, 10, 20, 40]
    activation: Activation = "tanh"
    use_bias: bool = True
    init: Init = "normal"
    seed: int = Field(3, ge=0)

    @pydantic.field_validator("depths")
    @classmethod
    def _depths(cls, depths):
        if not depths or min(depths) < 1:
            raise ValueError("`network.depths` must be a list of positive depths L.")
        return depths


class TrainProblem(ConfigSection):
    """`problem`: the [`deepest.training`][] weights (`rm` defaults to 1/noise²)."""

    rm: Any = None
    state_noise: float = Field(default_of(training, "state_noise"), ge=0)


class BarProblem(TrainProblem):
    rm: Any = 1.0


class ResidualProblem(TrainProblem):
    """`problem` of `depth_resolution`: R_f of the continuous action (`rf0_continuous`)."""

    rf0_continuous: float = Field(1e-4, gt=0)
    state_noise: float = Field(0.01, ge=0)


class TrainAnneal(RunSection):
    """`anneal` of a training: the schedule and [`deepest.anneal`][] settings (L-BFGS only:
    a network's action has no banded residuals)."""

    rf0: float = 1e-4
    n_beta: int = 30
    minimiser: Literal["lbfgs"] = "lbfgs"


class ResidualAnneal(RunSection):
    """`anneal` of `depth_resolution` (R_f's start from `problem.rf0_continuous`)."""

    n_beta: int = 30
    minimiser: Literal["lbfgs"] = "lbfgs"


class Backprop(ConfigSection):
    """`backprop`: Adam with costate gradients ([`deepest.fit`][]), `n_runs` runs."""

    learning_rate: float = Field(1e-2, gt=0)
    steps: int = Field(2000, ge=1)
    batch_size: int | None = Field(default_of(fit, "batch_size"), ge=1)
    n_runs: int = Field(4, ge=1)
    seed: int = Field(2, ge=0)


class TrainOutput(ConfigSection):
    save_betas: list[pydantic.NonNegativeInt] = []


class TrainConfig(ConfigSection):
    """A `deepest train` experiment (`experiment: twin_network`)."""

    experiment: Literal["twin_network"] = "twin_network"
    data: TwinNetworkData = TwinNetworkData()
    network: NetworkConfig = NetworkConfig()
    problem: TrainProblem = TrainProblem()
    anneal: TrainAnneal = TrainAnneal()
    backprop: Backprop = Backprop()
    output: TrainOutput = TrainOutput()

    @pydantic.model_validator(mode="after")
    def _fill(self):
        if self.problem.rm is None:
            noise = getattr(self.data, "noise", None)
            if noise is None:
                raise ValueError("Set `problem.rm`.")
            self.problem.rm = 1.0 / float(noise) ** 2
        self.anneal.minimiser_object()
        # depth_resolution: its R_f's start scales R_f^cont by a positive factor per depth
        self.anneal.schedule(getattr(self.problem, "rf0_continuous", None))
        return self

    @property
    def classification(self) -> bool:
        return self.experiment == "bar_images"

    def depths(self) -> list[int | None]:
        """The depths trained: [None] (the network as configured) or `network.depths`."""
        return list(getattr(self.network, "depths", [None]))

    def build_data(self) -> dict:
        """The train, validation and test pairs: {split: (inputs, targets)}, plus
        `generator` (the data-generating map, or None)."""
        import jax.random as jr

        d = self.data
        sizes = {s: getattr(d, f"n_{s}") for s in ("train", "validation", "test")}
        k_gen, *keys = jr.split(jr.key(d.seed), 4)
        out = {"generator": None}
        if isinstance(d, TwinNetworkData):
            gen = twin_generator(
                k_gen, d.variant, width=d.width, n_layers=d.generator_layers, gain=d.gain
            )
            out["generator"] = gen
            for (split, n), k in zip(sizes.items(), keys):
                out[split] = noisy_pairs(gen, n, k, noise=d.noise)
        elif isinstance(d, BarImagesData):
            for (split, n), k in zip(sizes.items(), keys):
                out[split] = bar_images(
                    n, k, size=d.size, noise=d.pixel_noise, positions=d.positions
                )
        else:
            flow = FlowMap(d.dim, k_gen, horizon=d.horizon, scale=d.scale)
            out["generator"] = flow
            lo, hi = d.input_range
            for (split, n), k in zip(sizes.items(), keys):
                k_in, k_pairs = jr.split(k)
                inputs = jr.uniform(k_in, (n, d.dim), minval=lo, maxval=hi)
                out[split] = noisy_pairs(flow, n, k_pairs, noise=d.noise, inputs=inputs)
        return out

    def network_factory(self, depth: int | None = None):
        """`key -> LayeredNetwork` of the configured architecture (for `depth_resolution`,
        the residual network of depth `depth`)."""
        net, acts = self.network, _activations()
        if isinstance(net, ResidualNetworkConfig):
            dim, h = self.data.dim, self.data.horizon / depth
            return lambda key: LayeredNetwork(
                [dim] * (depth + 1),
                acts[net.activation],
                key=key,
                use_bias=net.use_bias,
                init=net.init,
                residual_step=h,
            )
        layers = [acts[net.activation]] * (len(net.widths) - 2) + [acts[net.output_activation]]
        return lambda key: LayeredNetwork(
            net.widths, layers, key=key, use_bias=net.use_bias, init=net.init
        )

    def rf_scale(self, depth: int) -> float:
        """R_f^disc / R_f^cont = D·T/(2h²) of the residual network of depth L (h = T/L), by
        [`deepest.discrete_weights`][]."""
        d = self.data
        rf, _ = discrete_weights(1.0, 1.0, dim=d.dim, t1=d.horizon, n_steps=depth, n_measured=1)
        return float(rf)

    def schedule(self, depth: int | None = None) -> AnnealSchedule:
        """The schedule (for `depth_resolution`, R_f^cont scaled to the depth `depth`)."""
        if depth is None:
            return self.anneal.schedule()
        return self.anneal.schedule(self.problem.rf0_continuous * self.rf_scale(depth))

    def problem_for(self, data: dict, depth: int | None = None):
        """The [`deepest.training`][] problem on `data`'s training pairs."""
        import jax.random as jr

        factory = self.network_factory(depth)
        noise = getattr(self.data, "noise", None)
        return training(
            factory(jr.key(self.network.seed)),
            *data["train"],
            rm=np.asarray(self.problem.rm, dtype=float),
            validation=data["validation"],
            noise=noise,
            weight_init=factory,
            state_noise=self.problem.state_noise,
        )


class BarImagesConfig(TrainConfig):
    """A `deepest train` experiment (`experiment: bar_images`)."""

    experiment: Literal["bar_images"] = "bar_images"
    data: BarImagesData = BarImagesData()
    network: BarNetworkConfig = BarNetworkConfig()
    problem: BarProblem = BarProblem()


class DepthResolutionConfig(TrainConfig):
    """A `deepest train` experiment (`experiment: depth_resolution`)."""

    experiment: Literal["depth_resolution"] = "depth_resolution"
    data: FlowMapData = FlowMapData()
    network: ResidualNetworkConfig = ResidualNetworkConfig()
    problem: ResidualProblem = ResidualProblem()
    anneal: ResidualAnneal = ResidualAnneal()


TRAIN_EXPERIMENTS: dict[str, type[TrainConfig]] = {
    "twin_network": TrainConfig,
    "bar_images": BarImagesConfig,
    "depth_resolution": DepthResolutionConfig,
}
"""The train experiments, by the name in a config's `experiment` key."""


# -- running a training -------------------------------------------------------------------


def errors_of(net, data: dict, classification: bool) -> dict:
    """MSE (and accuracy) of the plain forward pass on the train, validation and test sets."""
    import jax
    import jax.numpy as jnp

    out = {}
    for split in ("train", "validation", "test"):
        x, y = data[split]
        pred = jax.vmap(net)(x)
        out[f"{split}_error"] = float(jnp.mean((pred - y) ** 2))
        if classification:
            hit = jnp.argmax(pred, axis=-1) == jnp.argmax(y, axis=-1)
            out[f"{split}_accuracy"] = float(jnp.mean(hit.astype(pred.dtype)))
    return out


def train_by_annealing(
    config: TrainConfig,
    data: dict,
    *,
    depth: int | None = None,
    progress: bool = False,
    **options,
):
    """Anneal the config's training problem (`options` go to [`deepest.anneal`][], e.g.
    `checkpoint`, `resume`). **Returns:** `(result, problem, summary)`, the summary a
    dict of the lowest-action path's and the best-validation path's errors (of a partial
    result: None)."""
    import jax.random as jr

    from .._annealing import anneal

    problem = config.problem_for(data, depth)
    schedule = config.schedule(depth)
    start = time.perf_counter()
    result = anneal(
        problem,
        schedule,
        config.anneal.n_paths,
        jr.key(config.anneal.seed),
        progress=progress,
        save_betas=config.output.save_betas,
        **{**config.anneal.run_options(), **options},
    )
    wall = time.perf_counter() - start
    if result.partial:
        return result, problem, None
    best = result.best
    by_validation = int(np.nanargmin(np.asarray(result.validation_error)))
    summary = {
        "wall_time": wall,
        "run_time": result.stats["run_time"],
        "compile_time": result.stats["compile_time"],
        "rf0": float(np.asarray(schedule.rf0)),
        "lowest_action_path": best,
        "final_action": float(result.action[-1, best]),
        "measurement_error": float(result.measurement_error[-1, best]),
        "model_error": float(result.model_error[-1, best]),
        "lowest_action": errors_of(result.model(best), data, problem.classification),
        "best_validation_path": by_validation,
        "best_validation": errors_of(result.model(by_validation), data, problem.classification),
    }
    return result, problem, summary


def train_by_backprop(
    config: TrainConfig, data: dict, *, depth: int | None = None, progress: bool = False
) -> dict:
    """Adam with costate gradients ([`deepest.fit`][]) on the MSE of the training pairs,
    `backprop.n_runs` runs. **Returns:** a dict of the lowest-training-loss run's and the
    best-validation run's errors."""
    import jax.numpy as jnp
    import jax.random as jr
    import optax

    b = config.backprop
    factory = config.network_factory(depth)

    def mse(y_hat, y):
        return jnp.mean((y_hat - y) ** 2)

    runs = []
    start = time.perf_counter()
    for key in jr.split(jr.key(b.seed), b.n_runs):
        k_init, k_fit = jr.split(key)
        net, _ = fit(
            factory(k_init),
            mse,
            data["train"],
            optax.adam(b.learning_rate),
            b.steps,
            k_fit,
            batch_size=b.batch_size,
            progress=progress,
        )
        runs.append(errors_of(net, data, config.classification))
    wall = time.perf_counter() - start
    lowest = int(np.argmin([r["train_error"] for r in runs]))
    by_validation = int(np.argmin([r["validation_error"] for r in runs]))
    return {
        "wall_time": wall,
        "lowest_train_run": lowest,
        "lowest_train": runs[lowest],
        "best_validation_run": by_validation,
        "best_validation": runs[by_validation],
    }


def mean_baseline(data: dict) -> dict:
    """Test MSE of predicting the mean training target for every input (the level any
    useful network must beat)."""
    mean = np.asarray(data["train"][1]).mean(axis=0)
    return {"test_error": float(np.mean((np.asarray(data["test"][1]) - mean) ** 2))}
