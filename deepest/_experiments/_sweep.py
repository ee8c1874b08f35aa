"""The sweep experiment: a grid of anneal configs, run by [`deepest.sweep`][]."""

import copy
import itertools
import os
from typing import Any, Literal, NamedTuple

import pydantic

from .._misc import did_you_mean
from ._anneal import AnnealConfig, AnnealSection
from ._base import read_yaml, validate

SHARED = tuple(k for k in AnnealSection.model_fields if k not in ("rf0", "alpha", "n_beta"))
"""The `anneal` keys every point of a sweep shares (one program runs them together): all
but the schedule's."""


def leaf_keys(model: type[pydantic.BaseModel], where: str = "") -> list[str]:
    """Every dotted key of a config class (a mapping-valued key such as `model.params` is one)."""
    out = []
    for name, field in model.model_fields.items():
        dotted = f"{where}.{name}" if where else name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            out += leaf_keys(annotation, dotted)
        else:
            out.append(dotted)
    return out


def set_key(config: dict, dotted: str, value: Any) -> None:
    """Set the dotted key of the nested mapping `config` to `value`."""
    *parents, last = dotted.split(".")
    for key in parents:
        config = config.setdefault(key, {})
    config[last] = value


class SweepPoint(NamedTuple):
    settings: dict
    config: AnnealConfig


class SweepConfig:
    """A `deepest sweep` file: `base` (an anneal config file, relative to the sweep file, or
    the config itself), `grid` (dotted keys to lists of values) and `combine` (`product`:
    every combination; `zip`: the i-th of each). Every point is checked as an anneal config
    is, all before any compute.

    Example:

        sweep = deepest.experiments.load("sweep.yaml")
        built = [p.config.build() for p in sweep.points]
    """

    def __init__(self, spec: dict, where: str = "."):
        for key in spec:
            if key not in ("base", "grid", "combine"):
                valid = ("base", "combine", "grid")
                raise ValueError(
                    f"Unknown key {key!r} in sweep.{did_you_mean(key, valid)} "
                    f"Valid keys: {', '.join(valid)}."
                )
        base = spec.get("base")
        if isinstance(base, str):
            base = read_yaml(os.path.join(where, base))
        if not isinstance(base, dict):
            raise ValueError("`base` must name an anneal config file or be one (a mapping).")
        self.base: AnnealConfig = validate(AnnealConfig, base)
        grid = spec.get("grid")
        if not isinstance(grid, dict) or not grid:
            raise ValueError("`grid` must map dotted config keys to lists of values.")
        valid = leaf_keys(AnnealConfig)
        for key, values in grid.items():
            if key not in valid:
                raise ValueError(
                    f"Unknown key {key!r} in grid.{did_you_mean(key, valid)} "
                    f"Valid keys: {', '.join(sorted(valid))}."
                )
            if not isinstance(values, list) or not values:
                raise ValueError(
                    f"`grid.{key}` must be a non-empty list of values; got {values!r}."
                )
        self.grid: dict[str, list] = grid
        self.combine: Literal["product", "zip"] = spec.get("combine", "product")
        if self.combine not in ("product", "zip"):
            raise ValueError(f"`combine` must be one of ('product', 'zip'); got {self.combine!r}.")
        if self.combine == "zip":
            lengths = {len(v) for v in grid.values()}
            if len(lengths) > 1:
                raise ValueError(
                    f"`combine: zip` needs lists of one length; got {sorted(lengths)}."
                )
            rows = list(zip(*grid.values()))
        else:
            rows = list(itertools.product(*grid.values()))
        self.points: list[SweepPoint] = []
        for row in rows:
            raw = copy.deepcopy(self.base.model_dump())
            for key, value in zip(grid, row):
                set_key(raw, key, copy.deepcopy(value))
            try:
                config = validate(AnnealConfig, raw)
            except ValueError as e:
                at = ", ".join(f"{k}={v!r}" for k, v in zip(grid, row))
                raise ValueError(f"sweep point ({at}): {e}") from None
            self.points.append(SweepPoint(dict(zip(grid, row)), config))
        for key in SHARED:
            if len({repr(getattr(p.config.anneal, key)) for p in self.points}) > 1:
                raise ValueError(f"`anneal.{key}` must be the same at every point of a sweep.")
        if len({repr(p.config.output.save_betas) for p in self.points}) > 1:
            raise ValueError("`output.save_betas` must be the same at every point of a sweep.")

    def model_dump(self) -> dict:
        """The sweep as a mapping (its base resolved), to be written as YAML."""
        return {"base": self.base.model_dump(), "grid": self.grid, "combine": self.combine}

    def run(self, built=None, **kwargs):
        """[`deepest.sweep`][] of every point (`built`: the points' `build()` if already
        made); `kwargs` go to `sweep` (progress, checkpoint, resume)."""
        from .._annealing import sweep

        built = [p.config.build() for p in self.points] if built is None else built
        first = self.points[0].config
        return sweep(
            [b.problem for b in built],
            [b.schedule for b in built],
            first.anneal.n_paths,
            [p.config.key() for p in self.points],
            **{**first.run_options(), **kwargs},
        )
