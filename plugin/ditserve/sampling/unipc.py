"""UniPC (Zhao et al., 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models"): diffusers' `UniPCMultistepScheduler`.

A multistep predictor (UniP) and a corrector (UniC) that re-solves each step with the model output
taken at its end, raising the order by one at no extra model call. B(h) = e^h − 1 (the paper's bh2,
diffusers' default): bh1 gave NaN in diffusers 0.42.1 on both a cosine-beta and a flow schedule, so it is
not offered. On a flow-matching checkpoint it runs on the flow's σ, as diffusers' Wan pipelines do
(`DiffusersSampler.flow_settings`). Defaults: "trailing" spacing, x̂₀ clipped as the checkpoint says
(sampling/fair.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ditserve.registry import SAMPLERS
from ditserve.sampling.diffusers_scheduler import DiffusersSampler
from ditserve.sampling.fair import ThresholdingConfig, thresholding_overrides


class UniPCConfig(ThresholdingConfig):
    name: Literal["unipc"] = "unipc"
    steps: int = Field(20, ge=1, le=1000)
    """Default number of denoising steps (a request may ask for another number within the limits)."""
    order: int = Field(2, ge=1, le=3)
    """Order of the predictor (the corrector adds one)."""
    lower_order_final: bool = True
    """Lower the order over the last steps (stabler below ~15 steps)."""


@SAMPLERS.register("unipc")
class UniPC(DiffusersSampler):
    """UniPC: multistep predictor-corrector in the data prediction, orders 1-3."""

    Config = UniPCConfig
    scheduler_class = "UniPCMultistepScheduler"
    prediction_types = frozenset({"epsilon", "v_prediction", "sample", "flow"})

    def scheduler_overrides(self) -> dict[str, Any]:
        return {
            "solver_order": self.config.order,
            "lower_order_final": self.config.lower_order_final,
            "timestep_spacing": self.config.timestep_spacing,
            **thresholding_overrides(self.config.clip_sample, self.scheduler_config),
            **self.flow_settings(),
        }
