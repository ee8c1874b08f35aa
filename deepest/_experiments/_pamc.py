"""The pamc experiment: an anneal experiment with a `pamc` section (precision annealing
Monte Carlo, [`deepest.pamc`][])."""

from typing import Literal

import pydantic
from pydantic import Field

from .._uncertainty import pamc
from ._anneal import AnnealConfig
from ._base import ConfigSection, beta_indices, default_of


class PAMCSection(ConfigSection):
    """`pamc`: the chains, kernel and β's of [`deepest.pamc`][] (defaults: its signature's).
    `betas: null` runs every β of the schedule; `start: anneal` starts the first β's chains
    at annealed minima, `draws` at the problem's initial draws; `save_betas: null` keeps the
    last β's samples."""

    n_chains: int = Field(64, ge=1)
    n_samples: int = Field(default_of(pamc, "n_samples"), ge=4)
    n_warmup: int = Field(default_of(pamc, "n_warmup"), ge=0)
    kernel: Literal["nuts", "hmc"] = default_of(pamc, "kernel")
    num_integration_steps: int = Field(default_of(pamc, "num_integration_steps"), ge=1)
    target_acceptance: float = Field(default_of(pamc, "target_acceptance"), gt=0, lt=1)
    betas: list[pydantic.NonNegativeInt] | None = default_of(pamc, "betas")
    start: Literal["anneal", "draws"] = "anneal"
    save_betas: list[pydantic.NonNegativeInt] | None = default_of(pamc, "save_betas")
    seed: int = Field(2, ge=0)

    @pydantic.field_validator("betas", "save_betas")
    @classmethod
    def _not_empty(cls, value, info):
        if value is not None and not value:
            raise ValueError(f"`pamc.{info.field_name}` must be a list of β indices or null.")
        return value


class PAMCConfig(AnnealConfig):
    """A `deepest pamc` experiment: the sections of an
    [`AnnealConfig`][deepest.experiments.AnnealConfig] and `pamc`."""

    pamc: PAMCSection = PAMCSection()

    @pydantic.model_validator(mode="after")
    def _betas(self):
        n_beta = self.anneal.n_beta
        section = self.pamc
        for key in ("betas", "save_betas"):
            beta_indices(f"pamc.{key}", getattr(section, key) or [], n_beta)
        betas = self.betas()
        if any(b >= c for b, c in zip(betas, betas[1:])):
            raise ValueError(f"`pamc.betas` must increase; got {betas}.")
        missing = sorted(set(section.save_betas or []) - set(betas))
        if missing:
            raise ValueError(f"`pamc.save_betas` names β's that are not run: {missing}.")
        return self

    def betas(self) -> list[int]:
        """The β indices sampled."""
        return list(self.pamc.betas or range(self.anneal.n_beta))

    def pamc_options(self) -> dict:
        """The keyword arguments of [`deepest.pamc`][] after `(problem, schedule, n_chains,
        key)` that this config sets (all but `init`)."""
        p = self.pamc
        return {
            "n_samples": p.n_samples,
            "n_warmup": p.n_warmup,
            "kernel": p.kernel,
            "num_integration_steps": p.num_integration_steps,
            "target_acceptance": p.target_acceptance,
            "betas": self.betas(),
            "save_betas": p.save_betas,
        }

    def pamc_key(self):
        """The PRNG key of the chains (`pamc.seed`)."""
        import jax.random as jr

        return jr.key(self.pamc.seed)
