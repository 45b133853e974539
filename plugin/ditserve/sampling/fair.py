"""Fair configuration of solvers compared with each other, and the check that a comparison is fair.

Two settings decide a comparison on a pixel-space checkpoint before the solver does:
- timestep spacing: a checkpoint's "leading" spacing (DDPM-era configs) starts a few-step run far below the last
  trained timestep (5 steps: t = 800 of 999), so the run integrates from a noisier-than-assumed start and
  converges to a different sample than a solver starting at 999. diffusers recommends "trailing" for few
  steps; every wrapped solver here defaults to it, and the own solvers always start at the last timestep.
  That advice assumes a moderate σ_T = √((1 − ᾱ_T)/ᾱ_T) at the last timestep (linear betas: 157). Where it is
  extreme (digits-dit's `squaredcos_cap_v2`: 20291) the solvers that step in σ (Euler, Heun) take their first
  interval as clipped DDIM steps (sampling/sigma_space.py): they still start at the last timestep, so the check
  below holds for them unchanged;
- clipping x̂₀: with `clip_sample` on (digits-dit), DDIM, DDPM and Heun clip the data prediction to [-1, 1]
  and the own solvers follow the checkpoint; the multistep solvers (DPM-Solver, DPM-Solver++, UniPC) clip
  through diffusers' `thresholding` with maximum 1 (the dynamic threshold s = clamp(quantile, 1, 1) = 1,
  so x̂₀ is clipped to [-1, 1] and not rescaled). Euler and PNDM cannot clip: they take part in a clipping
  comparison only as information.
`assert_fair` refuses a comparison where some solvers clip and others do not, or one starts below the last
trained timestep; the benchmark calls it on every comparison it builds.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Literal

from ditserve.errors import PlanError
from ditserve.sampling.base import SamplerConfig, prediction_type

if TYPE_CHECKING:
    from ditserve.sampling.base import Sampler

FEW_STEP_SPACING = "trailing"
"""Where a wrapped solver's steps go by default: the first at the last trained timestep (diffusers' advice for
few-step sampling; at many steps the spacings agree)."""


class FewStepConfig(SamplerConfig):
    """Fields of a wrapped solver meant for few steps: spacing that starts at pure noise, clipping as the model."""

    timestep_spacing: Literal["leading", "trailing", "linspace"] = FEW_STEP_SPACING
    """How the steps are placed over the training timesteps ("trailing": the first at the last one)."""


class ThresholdingConfig(FewStepConfig):
    """A few-step solver whose diffusers scheduler clips x̂₀ only through `thresholding`."""

    clip_sample: bool | None = None
    """Clip the data prediction x̂₀ to [-1, 1] (diffusers' thresholding at maximum 1); None: as the checkpoint's
    `clip_sample` (on for digits-dit, off for flow models)."""


def thresholding_overrides(clip: bool | None, scheduler_config: dict) -> dict[str, Any]:
    """diffusers settings that clip x̂₀ to [-1, 1] with a thresholding scheduler, or switch thresholding off."""
    checkpoint_clips = bool(scheduler_config.get("clip_sample", False)) and prediction_type(scheduler_config) != "flow"
    if not (checkpoint_clips if clip is None else clip):
        return {"thresholding": False}
    if float(scheduler_config.get("clip_sample_range", 1.0)) != 1.0:
        raise PlanError(
            "clip_sample: diffusers' thresholding clips to [-1, 1] only; this checkpoint clips to "
            f"±{scheduler_config['clip_sample_range']}: set clip_sample: false or use an own solver"
        )
    return {"thresholding": True, "sample_max_value": 1.0}


def clips(sampler: Sampler) -> bool:
    """Whether `sampler` clips the data prediction x̂₀ on its model."""
    from ditserve.sampling.diffusers_scheduler import DiffusersSampler
    from ditserve.sampling.ode import ODESampler

    stages = getattr(sampler, "stages", None)
    if stages:  # sampler-scheduler: clips if every stage does
        return all(clips(stage) for stage in stages)
    if isinstance(sampler, ODESampler):
        return sampler.noise_schedule.clip
    if isinstance(sampler, DiffusersSampler):
        scheduler = sampler.make_scheduler()
        accepts = inspect.signature(type(scheduler).__init__).parameters
        config = scheduler.config
        return bool(("clip_sample" in accepts and config.get("clip_sample")) or
                    ("thresholding" in accepts and config.get("thresholding")))  # fmt: skip
    return False


def first_timestep(sampler: Sampler, steps: int) -> float:
    """The timestep `sampler` starts a `steps`-step run at."""
    from ditserve.sampling.diffusers_scheduler import DiffusersSampler
    from ditserve.sampling.ode import ODESampler

    if isinstance(sampler, ODESampler):
        return float(sampler.taus(steps, None)[0])
    if isinstance(sampler, DiffusersSampler):
        scheduler = sampler.make_scheduler()
        scheduler.set_timesteps(steps)
        return float(scheduler.timesteps[0])
    raise PlanError(f"{sampler.name}: no rule for where it starts")


def assert_fair(samplers: dict[str, Sampler], steps: int) -> None:
    """Refuse a comparison (label → sampler) where some clip x̂₀ and others do not, or one starts a `steps`-step
    run below the last trained timestep (within 1%)."""
    clipping = {label: clips(sampler) for label, sampler in samplers.items()}
    if len(set(clipping.values())) > 1:
        on = sorted(label for label, c in clipping.items() if c)
        off = sorted(label for label, c in clipping.items() if not c)
        raise PlanError(f"unfair comparison: {', '.join(on)} clip x̂₀ and {', '.join(off)} do not; "
                        "clip in all of them (clip_sample) or in none")  # fmt: skip
    for label, sampler in samplers.items():
        last = int(sampler.scheduler_config.get("num_train_timesteps", 1000)) - 1
        start = first_timestep(sampler, steps)
        if start < 0.99 * last:
            raise PlanError(f"unfair comparison: {label} starts {steps} steps at t = {start:.0f}, not at the last "
                            f"trained timestep {last}; set timestep_spacing: {FEW_STEP_SPACING}")  # fmt: skip
