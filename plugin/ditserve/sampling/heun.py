"""Heun (Karras et al., 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Algorithm 1): diffusers' `HeunDiscreteScheduler`.

Second order: an Euler step, the model again at its end, and the average of the two slopes; two model
calls per step but the last.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ditserve.registry import SAMPLERS
from ditserve.sampling.fair import FewStepConfig
from ditserve.sampling.sigma_space import SigmaSpaceSampler


class HeunConfig(FewStepConfig):
    name: Literal["heun"] = "heun"
    steps: int = Field(20, ge=1, le=1000)
    """Steps; Heun calls the model 2·steps − 1 times."""
    karras_sigmas: bool = False
    """Place the steps on Karras et al.'s σ schedule (ρ = 7) instead of evenly over the timesteps."""


@SAMPLERS.register("heun")
class Heun(SigmaSpaceSampler):
    """Heun: second-order (explicit trapezoidal) steps of the probability-flow ODE in σ."""

    Config = HeunConfig
    scheduler_class = "HeunDiscreteScheduler"
    prediction_types = frozenset({"epsilon", "v_prediction", "sample"})

    def scheduler_overrides(self) -> dict[str, Any]:
        return {"use_karras_sigmas": self.config.karras_sigmas, "timestep_spacing": self.config.timestep_spacing}
