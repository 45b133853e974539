"""Sampler Scheduler: different solvers for different step ranges of one run (in the spirit of Cheng,
2023, "Sampler Scheduler for Diffusion Models", arXiv 2311.06845: e.g. a robust first-order sampler
through the noisy early steps, a high-order one where the trajectory is smooth).

The run's timesteps are placed once (this config's `spacing`) and cut into consecutive stages; stage k
runs from where stage k−1 stopped, with its own solver, over its share of the steps. A stage ends at
`until` (a fraction of the steps, rounded) or after `steps`; the last stage runs to the end. Stages
must be own solvers, ODE or SDE (they take an explicit list of timesteps and share the noise schedule; the
wrapped diffusers schedulers own their timestep grids and cannot be cut); their own `steps` and
`spacing` are ignored. SDE stages (`sde-dpm-solver++`, `euler-ancestral`) draw their noise from each image's
generator, so a mixed schedule is as reproducible from its seeds as an ODE one.

The paper's finding is that SDE steps early and ODE steps late beat either alone: early noise injection
corrects the errors of the first large steps, and deterministic steps near the data keep the detail that
noise injection at few steps would blur. `preset: sde-then-ode` is that schedule: SDE-DPM-Solver++(2M) over
the first half of the steps, then UniPC (the own `dc-solver` with every compensation ratio 1) to the end.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ditserve.errors import PlanError
from ditserve.registry import SAMPLERS
from ditserve.sampling.ode import ODESampler, ODESamplerConfig, Progress
from ditserve.sampling.sde import SDESampler


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


PRESETS: dict[str, list[dict[str, Any]]] = {
    "sde-then-ode": [
        {"sampler": {"name": "sde-dpm-solver++"}, "until": 0.5},
        {"sampler": {"name": "dc-solver", "ratios": {1: [1.0]}}},  # ratios all 1: plain UniPC, no calibration
    ],
}
"""Named stage lists (`preset`)."""


class SamplerSchedulerConfig(ODESamplerConfig):
    name: Literal["sampler-scheduler"] = "sampler-scheduler"
    steps: int = Field(10, ge=1, le=1000)
    """Default number of denoising steps (a request may ask for another number within the limits)."""
    stages: list[Stage] | None = Field(None, min_length=1, max_length=16)
    """The stages in order, e.g. [{sampler: {name: sde-dpm-solver++}, until: 0.3},
    {sampler: {name: dc-solver, ratios: ...}}]; the last stage runs to the end."""
    preset: Literal["sde-then-ode"] | None = None
    """Or a named schedule: sde-then-ode is the paper's SDE-early, ODE-late recommendation (module docstring)."""

    @model_validator(mode="after")
    def _stages_or_preset(self) -> SamplerSchedulerConfig:
        if (self.stages is None) == (self.preset is None):
            raise ValueError("give `stages` or a `preset` (sde-then-ode), not both")
        return self

    def stage_list(self) -> list[Stage]:
        return self.stages if self.stages is not None else [Stage(**stage) for stage in PRESETS[self.preset]]


@SAMPLERS.register("sampler-scheduler")
class SamplerScheduler(ODESampler):
    """Sampler Scheduler: a list of own ODE and SDE solvers, each over its own range of the steps."""

    Config = SamplerSchedulerConfig

    def __init__(self, config: SamplerSchedulerConfig, scheduler_config: dict) -> None:
        super().__init__(config, scheduler_config)
        self.stages: list[ODESampler] = []
        for k, stage in enumerate(config.stage_list()):
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
        for stage in self.config.stage_list()[:-1]:
            end = done + stage.steps if stage.steps is not None else round((stage.until or 0) * steps)
            done = min(max(end, done), steps)
            ends.append(done)
        return [*ends, steps]

    def sample(self, denoise, noise, steps, generators, on_step, schedule=None):
        return self.integrate(denoise, noise, self.taus(steps, schedule), Progress(on_step, 0, steps), generators)

    def integrate(self, denoise, x, taus, progress, generators=()):
        start = 0
        for solver, end in zip(self.stages, self.boundaries(len(taus) - 1), strict=True):
            if end > start:
                stage = (denoise, x, taus[start : end + 1],
                         Progress(progress.on_step, progress.first + start, progress.total))  # fmt: skip
                x = solver.integrate(*stage, generators) if isinstance(solver, SDESampler) else solver.integrate(*stage)
            start = end
        return x
