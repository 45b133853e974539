"""DPM-Solver++ (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models"): diffusers' `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"` (2M, 3M) or
`"sde-dpmsolver++"` (SDE).

DPM-Solver in the data prediction x̂₀ instead of the noise, multistep: it stays stable under large
guidance scales, which noise-prediction solvers are not. The SDE variant re-injects noise each step
(second order, from each image's own generator). On a flow-matching checkpoint it runs on the flow's
σ (`DiffusersSampler.flow_settings`). Defaults: "trailing" spacing, x̂₀ clipped as the checkpoint says
(sampling/fair.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ditserve.registry import SAMPLERS
from ditserve.sampling.diffusers_scheduler import DiffusersSampler
from ditserve.sampling.fair import ThresholdingConfig, thresholding_overrides

VARIANTS = {"2M": ("dpmsolver++", 2), "3M": ("dpmsolver++", 3), "SDE": ("sde-dpmsolver++", 2)}
"""Variant → (diffusers algorithm_type, solver order)."""


class DPMSolverPPConfig(ThresholdingConfig):
    name: Literal["dpm-solver++"] = "dpm-solver++"
    steps: int = Field(20, ge=1, le=1000)
    """Default number of denoising steps (a request may ask for another number within the limits)."""
    variant: Literal["2M", "3M", "SDE"] = "2M"
    """2M / 3M: second / third-order multistep ODE solver; SDE: the second-order stochastic one."""
    lower_order_final: bool = True
    """Lower the order over the last steps (stabler below ~15 steps)."""


@SAMPLERS.register("dpm-solver++")
class DPMSolverPP(DiffusersSampler):
    """DPM-Solver++ 2M, 3M or SDE (multistep, data prediction)."""

    Config = DPMSolverPPConfig
    scheduler_class = "DPMSolverMultistepScheduler"
    prediction_types = frozenset({"epsilon", "v_prediction", "sample", "flow"})

    def scheduler_overrides(self) -> dict[str, Any]:
        algorithm, order = VARIANTS[self.config.variant]
        return {
            "algorithm_type": algorithm,
            "solver_order": order,
            "lower_order_final": self.config.lower_order_final,
            "timestep_spacing": self.config.timestep_spacing,
            **thresholding_overrides(self.config.clip_sample, self.scheduler_config),
            **self.flow_settings(),
        }
