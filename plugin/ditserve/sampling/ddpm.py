"""DDPM (Ho et al., 2020, "Denoising Diffusion Probabilistic Models"): diffusers' `DDPMScheduler`.

Ancestral sampling: fresh noise every step, drawn from each image's own generator so a batch gives the
same images as its members run alone.
"""

from __future__ import annotations

from typing import Any, Literal

from ditserve.registry import SAMPLERS
from ditserve.sampling.base import SamplerConfig
from ditserve.sampling.diffusers_scheduler import DiffusersSampler


class DDPMConfig(SamplerConfig):
    name: Literal["ddpm"] = "ddpm"
    variance_type: Literal["fixed_small", "fixed_large"] | None = None
    """Posterior variance of each step; None keeps the checkpoint's setting."""
    clip_sample: bool | None = None
    """Clip the predicted x₀ to the sample range; None keeps the checkpoint's setting."""


@SAMPLERS.register("ddpm")
class DDPM(DiffusersSampler):
    """DDPM: the stochastic ancestral sampler the model was trained for (needs many steps)."""

    Config = DDPMConfig
    scheduler_class = "DDPMScheduler"
    prediction_types = frozenset({"epsilon", "v_prediction", "sample"})

    def scheduler_overrides(self) -> dict[str, Any]:
        overrides = {"variance_type": self.config.variance_type, "clip_sample": self.config.clip_sample}
        return {key: value for key, value in overrides.items() if value is not None}
