"""SDE-DPM-Solver++(2M) (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", §5 and Appendix: the second-order multistep solver of the diffusion SDE in the data prediction), on
explicit timesteps so that it can be a stage of a `sampler-scheduler`.

With h = λ_t − λ_s (λ = log α/σ) one step is
  x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) (D₀ + D₁/2) + σ_t √(1 − e^{−2h}) z,
D₀ the data prediction at s, D₁ = (D₀ − D₋₁)·h/h₋₁ its backward difference (0 on the first step: first order),
z fresh noise from each image's generator. diffusers' `sde-dpmsolver++` (the wrapped `dpm-solver++` SDE
variant) is the same update, but its scheduler owns its timestep grid and cannot run a range of a run.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ditserve.registry import SAMPLERS
from ditserve.sampling.ode import ODESamplerConfig
from ditserve.sampling.sde import SDESampler, fresh_noise


class SDEDPMSolverPPConfig(ODESamplerConfig):
    name: Literal["sde-dpm-solver++"] = "sde-dpm-solver++"
    steps: int = Field(20, ge=1, le=1000)
    """Default number of denoising steps (a request may ask for another number within the limits)."""


@SAMPLERS.register("sde-dpm-solver++")
class SDEDPMSolverPP(SDESampler):
    """SDE-DPM-Solver++(2M): second-order multistep steps of the diffusion SDE, noise from each image's generator."""

    Config = SDEDPMSolverPPConfig

    def integrate(self, denoise, x, taus, progress, generators=()):
        ns, data = self.noise_schedule, self.data_fn(denoise)
        lam, alpha, sigma = ns.lam(taus), ns.alpha(taus), ns.sigma(taus)
        previous = None  # (D₀, h) of the step before
        for i in range(len(taus) - 1):
            h = float(lam[i + 1] - lam[i])
            d0 = data(x, float(taus[i]))
            d = d0 if previous is None else d0 + 0.5 * (d0 - previous[0]) * (h / previous[1])
            decay = float(np.expm1(-2.0 * h))  # e^{−2h} − 1
            x = (float(sigma[i + 1] / sigma[i]) * float(np.exp(-h))) * x - float(alpha[i + 1]) * decay * d
            x = x + float(sigma[i + 1]) * float(np.sqrt(-decay)) * fresh_noise(x, generators)
            previous = (d0, h)
            progress(i + 1, x)
        return x
