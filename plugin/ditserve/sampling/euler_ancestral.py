"""Ancestral Euler (Karras et al., 2022, "Elucidating the Design Space of Diffusion-Based Generative Models";
the "Euler a" of k-diffusion and diffusers' `EulerAncestralDiscreteScheduler`), on explicit timesteps so that it
can be a stage of a `sampler-scheduler`.

In the variance-exploding variables x̃ = x/α, σ̃ = σ/α, a step from σ̃_s to σ̃_t splits σ̃_t² into a deterministic
part σ_down² and fresh noise σ_up² = σ̃_t² (σ̃_s² − σ̃_t²)/σ̃_s²: an Euler step of the ODE to σ_down, then noise of
scale σ_up from each image's generator.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ditserve.registry import SAMPLERS
from ditserve.sampling.ode import ODESamplerConfig
from ditserve.sampling.sde import SDESampler, fresh_noise


class EulerAncestralConfig(ODESamplerConfig):
    name: Literal["euler-ancestral"] = "euler-ancestral"
    steps: int = Field(30, ge=1, le=1000)
    """Default number of denoising steps (a request may ask for another number within the limits)."""


@SAMPLERS.register("euler-ancestral")
class EulerAncestral(SDESampler):
    """Ancestral Euler: an Euler step of the probability-flow ODE, then fresh noise back to the next noise level."""

    Config = EulerAncestralConfig

    def integrate(self, denoise, x, taus, progress, generators=()):
        ns, data = self.noise_schedule, self.data_fn(denoise)
        alpha = ns.alpha(taus)
        ve_sigma = ns.sigma(taus) / alpha
        for i in range(len(taus) - 1):
            s, t = float(ve_sigma[i]), float(ve_sigma[i + 1])
            x0 = data(x, float(taus[i]))
            up = min(t, float(np.sqrt(max(t * t * (s * s - t * t), 0.0))) / s)
            down = float(np.sqrt(t * t - up * up))
            ve = x / float(alpha[i])
            ve = ve + (ve - x0) * ((down - s) / s) + up * fresh_noise(x, generators)
            x = float(alpha[i + 1]) * ve
            progress(i + 1, x)
        return x
