"""DDIM (Song et al., 2021, "Denoising Diffusion Implicit Models"): diffusers' `DDIMScheduler`.

`use_clipped_model_output` defaults to True: with sample clipping on, it recomputes ε from the clipped
x₀ so the update stays consistent with it. Without it, guidance scales ≥ 3 on the pixel-space digits
model blow up into speckle (STACK-NOTES.md measured accuracy 0.17–0.33 → 1.00 with it).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ditserve.registry import SAMPLERS
from ditserve.sampling.base import SamplerConfig
from ditserve.sampling.diffusers_scheduler import DiffusersSampler


class DDIMConfig(SamplerConfig):
    name: Literal["ddim"] = "ddim"
    eta: float = Field(0.0, ge=0.0, le=1.0)
    """Noise re-injected per step: 0 is the deterministic DDIM ODE, 1 matches DDPM's variance."""
    timestep_spacing: Literal["leading", "trailing", "linspace"] | None = None
    """How the steps are placed over the training timesteps; None keeps the checkpoint's setting."""
    clip_sample: bool | None = None
    """Clip the predicted x₀ to the sample range; None keeps the checkpoint's setting."""
    use_clipped_model_output: bool = True
    """Recompute ε from the clipped x₀ (only matters when clipping is on)."""


@SAMPLERS.register("ddim")
class DDIM(DiffusersSampler):
    """DDIM: deterministic (eta=0) first-order sampler over a subsequence of the training timesteps."""

    Config = DDIMConfig
    scheduler_class = "DDIMScheduler"
    prediction_types = frozenset({"epsilon", "v_prediction", "sample"})

    def scheduler_overrides(self) -> dict[str, Any]:
        overrides = {"timestep_spacing": self.config.timestep_spacing, "clip_sample": self.config.clip_sample}
        return {key: value for key, value in overrides.items() if value is not None}

    def step_kwargs(self) -> dict[str, Any]:
        return {"eta": self.config.eta, "use_clipped_model_output": self.config.use_clipped_model_output}
