"""Sampler Scheduler: different solvers for different step ranges of one run (in the spirit of Cheng,
2023, "Sampler Scheduler for Diffusion Models", arXiv 2311.06845: e.g. a robust first-order sampler
through the noisy early steps, a high-order one where the trajectory is smooth).

The run's timesteps are placed once (this config's `spacing`) and cut into consecutive stages; stage k
runs from where stage k−1 stopped, with its own solver, over its share of the steps. A stage ends at
`until` (a fraction of the steps, rounded) or after `steps`; the last stage runs to the end. Stages
must be own ODE solvers (they take an explicit list of timesteps and share the noise schedule; the
wrapped diffusers schedulers own their timestep grids and cannot be cut); their own `steps` and
`spacing` are ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ditserve.errors import PlanError
from ditserve.registry import SAMPLERS
from ditserve.sampling.ode import ODESampler, ODESamplerConfig, Progress


class Stage(BaseModel):
    """One step range and its solver."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    sampler: dict[str, Any]
    """The solver of this stage, `{name: ..., <its fields>}`."""
    until: float | None = Field(None, gt=0.0, le=1.0)
    """The stage ends after this fraction of the run's steps."""
    steps: int | None = Field(None, ge=1, le=1000)
    """Or: the stage runs this many steps."""

    @model_validator(mode="after")
    def _one_end(self) -> Stage:
        if self.until is not None and self.steps is not None:
            raise ValueError("give a stage `until` (a fraction) or `steps`, not both")
        return self


class SamplerSchedulerConfig(ODESamplerConfig):
    name: Literal["sampler-scheduler"] = "sampler-scheduler"
    steps: int = Field(10, ge=1, le=1000)
    """Default number of denoising steps (a request may ask for another number within the limits)."""
    stages: list[Stage] = Field(min_length=1, max_length=16)
    """The stages in order, e.g. [{sampler: {name: paradigms, window: 1}, until: 0.3},
    {sampler: {name: dc-solver, ratios: ...}}]; the last stage runs to the end."""


@SAMPLERS.register("sampler-scheduler")
class SamplerScheduler(ODESampler):
    """Sampler Scheduler: a list of own solvers, each over its own range of the steps."""

    Config = SamplerSchedulerConfig

    def __init__(self, config: SamplerSchedulerConfig, scheduler_config: dict) -> None:
        super().__init__(config, scheduler_config)
        self.stages: list[ODESampler] = []
        for k, stage in enumerate(config.stages):
            where = f"plan.sampler.stages[{k}].sampler"
            parsed = SAMPLERS.parse(stage.sampler, where)
            cls = SAMPLERS.get(parsed.name)
            if not issubclass(cls, ODESampler) or cls is SamplerScheduler:
                own = ", ".join(n for n, c in SAMPLERS if issubclass(c, ODESampler) and c is not SamplerScheduler)
                raise PlanError(f"{where}: {parsed.name!r} cannot run a range of steps; a stage takes one of: {own}")
            self.stages.append(cls(parsed, scheduler_config))

    def boundaries(self, steps: int) -> list[int]:
        """The step at which each stage ends (the last ends at `steps`)."""
        ends, done = [], 0
        for stage in self.config.stages[:-1]:
            end = done + stage.steps if stage.steps is not None else round((stage.until or 0) * steps)
            done = min(max(end, done), steps)
            ends.append(done)
        return [*ends, steps]

    def integrate(self, denoise, x, taus, progress):
        start = 0
        for solver, end in zip(self.stages, self.boundaries(len(taus) - 1), strict=True):
            if end > start:
                x = solver.integrate(denoise, x, taus[start : end + 1],
                                     Progress(progress.on_step, progress.first + start, progress.total))  # fmt: skip
            start = end
        return x
