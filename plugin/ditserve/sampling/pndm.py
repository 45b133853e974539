"""PNDM (Liu et al., 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"): diffusers'
`PNDMScheduler`.

A linear multistep method (PLMS, fourth order) on the DDIM transfer; the first steps are started with
Runge-Kutta (PRK) unless `skip_prk_steps`, which costs three extra model calls per started step.
"""

from __future__ import annotations

from typing import Any, Literal

from ditserve.registry import SAMPLERS
from ditserve.sampling.base import SamplerConfig
from ditserve.sampling.diffusers_scheduler import DiffusersSampler


class PNDMConfig(SamplerConfig):
    name: Literal["pndm"] = "pndm"
    skip_prk_steps: bool = True
    """Start the multistep method with plain steps instead of Runge-Kutta (fewer model calls, as in Stable
    Diffusion's configs); False is the paper's F-PNDM."""
    timestep_spacing: Literal["leading", "trailing", "linspace"] | None = None
    """How the steps are placed over the training timesteps; None keeps the checkpoint's setting."""


@SAMPLERS.register("pndm")
class PNDM(DiffusersSampler):
    """PNDM: pseudo linear multistep (PLMS), optionally started with pseudo Runge-Kutta steps."""

    Config = PNDMConfig
    scheduler_class = "PNDMScheduler"
    prediction_types = frozenset({"epsilon", "v_prediction"})

    def scheduler_overrides(self) -> dict[str, Any]:
        overrides = {"skip_prk_steps": self.config.skip_prk_steps, "timestep_spacing": self.config.timestep_spacing}
        return {key: value for key, value in overrides.items() if value is not None}
