"""Tuned plans: the sampler and cache `ditserve tune` found fastest at a PSNR target, per step count.

A model config names the file in `plan.tuned`; the engine then runs a request that sets neither `sampler` nor
`cache` under the tuned plan whose step count equals the request's steps (the plan's own when it gives none)
and whose guidance band holds the request's guidance, and under the plan otherwise. The file is what
`ditserve tune` writes (ditserve/tune.py):

    model: digits-dit
    target_psnr: 35.0
    plans:
    - steps: 50                      # the request's steps, and the reference the PSNR is measured against
      guidance: [3.5, 4.5]           # the guidance band the plan was measured for
      sampler: {name: dpm-solver++, steps: 20}
      cache: {name: fora, spacing: 0.12}
      measured: {psnr: 35.8, wall_ratio: 3.9, count_ratio: 0.26, ...}
    search: {candidates: 61, seconds: 412.0, ...}

A tuned plan answers "the images 50 steps of the plan's sampler would give, within the target": its sampler
may take fewer steps than the request asked for, and the result's stats report the steps it took. A request
that sets its own sampler or cache runs as it asks (a tuned sampler was measured with its tuned cache only).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from ditserve.errors import ConfigError
from ditserve.registry import CACHES, SAMPLERS, StrategyConfig
from ditserve.validation import validate_model

if TYPE_CHECKING:
    from ditserve.config import ModelConfig


class TunedPlan(BaseModel):
    """One step count's tuned sampler and cache, with what the tuner measured for them."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    steps: int = Field(ge=1, le=1000)
    """The request steps this plan serves: the plan's sampler at these steps gave the reference images."""
    guidance: tuple[float, float]
    """The band of guidance scales (low, high, inclusive) the plan serves."""
    sampler: SerializeAsAny[StrategyConfig]
    """The sampler that runs instead of the plan's, with the steps it takes."""
    cache: SerializeAsAny[StrategyConfig]
    """The cache that runs instead of the plan's."""
    measured: dict[str, float] = Field(default_factory=dict)
    """The tuner's figures on held-back seeds (PSNR, wall and count ratios, accuracy, Fréchet): for readers."""

    @field_validator("sampler", mode="before")
    @classmethod
    def _sampler(cls, value: Any) -> StrategyConfig:
        return SAMPLERS.parse(value, "sampler")

    @field_validator("cache", mode="before")
    @classmethod
    def _cache(cls, value: Any) -> StrategyConfig:
        return CACHES.parse(value, "cache")

    @field_validator("guidance")
    @classmethod
    def _band(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] <= value[1]:
            raise ValueError(f"must be [low, high] with 0 <= low <= high (got {list(value)})")
        return value

    def serves(self, steps: int, guidance: float) -> bool:
        return steps == self.steps and self.guidance[0] <= guidance <= self.guidance[1]


class TunedPlans(BaseModel):
    """A tuned-plans file: the model it was tuned on, the target, one plan per step count and guidance band."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model: str
    """The model name (`model.name`) the plans were tuned on; a config for another model refuses the file."""
    target_psnr: float = Field(gt=0.0)
    """Mean PSNR (dB) against the plan's own sampler at `steps` that every plan met on held-back seeds."""
    plans: tuple[TunedPlan, ...] = Field(min_length=1)
    search: dict[str, Any] = Field(default_factory=dict)
    """What the search cost and covered (candidates tried, seconds, images): for readers."""

    @model_validator(mode="after")
    def _one_plan_each(self) -> TunedPlans:
        for k, a in enumerate(self.plans):
            for b in self.plans[k + 1 :]:
                if a.steps == b.steps and a.guidance[0] <= b.guidance[1] and b.guidance[0] <= a.guidance[1]:
                    raise ValueError(f"two plans serve {a.steps} steps at overlapping guidance bands; keep one")
        return self

    def pick(self, steps: int, guidance: float) -> TunedPlan | None:
        """The plan that serves `steps` at `guidance`, or None."""
        return next((plan for plan in self.plans if plan.serves(steps, guidance)), None)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def tuned_path(config: ModelConfig) -> Path | None:
    """`plan.tuned` resolved against the config file's folder, or None when the config names no file."""
    if config.plan.tuned is None:
        return None
    path = Path(config.plan.tuned)
    return path if path.is_absolute() or config.source is None else (config.source.parent / path).resolve()


def read_tuned(config: ModelConfig) -> TunedPlans | None:
    """The tuned plans `config` names (None when it names none), checked against the config: the file must
    exist, parse, be tuned for this model, and ask for no more steps than `limits.max_steps` allows."""
    path = tuned_path(config)
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError([f"plan.tuned: {str(path)!r} does not exist; write it with `ditserve tune --out`"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError([f"plan.tuned: {path} is not valid YAML: {err}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"plan.tuned: {path} must be a mapping with model, target_psnr and plans"])
    tuned = validate_model(TunedPlans, data, where=f"plan.tuned ({path.name})")
    problems = []
    if tuned.model != config.model.name:
        problems.append(
            f"plan.tuned: {path.name} was tuned on model {tuned.model!r}, not {config.model.name!r}; "
            "run `ditserve tune` on this model's config"
        )
    for plan in tuned.plans:
        if max(plan.steps, getattr(plan.sampler, "steps", 0)) > config.limits.max_steps:
            problems.append(f"plan.tuned: the plan for {plan.steps} steps exceeds limits.max_steps")
    if problems:
        raise ConfigError(problems)
    return tuned
