"""Euler (Karras et al., 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Algorithm 2 without churn): diffusers' `EulerDiscreteScheduler`.

First-order steps of the probability-flow ODE in σ (the noise-to-signal ratio), the model input scaled
by 1/√(σ² + 1); optionally on Karras' σ spacing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ditserve.registry import SAMPLERS
from ditserve.sampling.fair import FewStepConfig
from ditserve.sampling.sigma_space import SigmaSpaceSampler


class EulerConfig(FewStepConfig):
    name: Literal["euler"] = "euler"
    steps: int = Field(30, ge=1, le=1000)
    """Default number of denoising steps (a request may ask for another number within the limits)."""
    karras_sigmas: bool = False
    """Place the steps on Karras et al.'s σ schedule (ρ = 7) instead of evenly over the timesteps."""


@SAMPLERS.register("euler")
class Euler(SigmaSpaceSampler):
    """Euler: first-order steps of the probability-flow ODE in σ."""

    Config = EulerConfig
    scheduler_class = "EulerDiscreteScheduler"
    prediction_types = frozenset({"epsilon", "v_prediction", "sample"})

    def scheduler_overrides(self) -> dict[str, Any]:
        return {"use_karras_sigmas": self.config.karras_sigmas, "timestep_spacing": self.config.timestep_spacing}
