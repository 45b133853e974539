"""Flow-matching Euler (Lipman et al., 2023, "Flow Matching for Generative Modeling"; Esser et al., 2024,
SD3): diffusers' `FlowMatchEulerDiscreteScheduler`.

x ← x + (σ_next − σ)·v along the straight path x_σ = (1 − σ)·x₀ + σ·ε, σ from 1 to 0, optionally
shifted towards high noise (`shift`, SD3: 3.0 at 1024 px). The reference sampler of flow-matching
models (SD3, Flux, the embedded digits-flow).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ditserve.registry import SAMPLERS
from ditserve.sampling.base import SamplerConfig
from ditserve.sampling.diffusers_scheduler import DiffusersSampler


class FlowEulerConfig(SamplerConfig):
    name: Literal["flow-euler"] = "flow-euler"
    shift: float | None = Field(None, gt=0.0, le=100.0)
    """σ ↦ shift·σ / (1 + (shift − 1)·σ): more steps at high noise; None keeps the checkpoint's setting."""


@SAMPLERS.register("flow-euler")
class FlowEuler(DiffusersSampler):
    """Euler steps along the rectified-flow path (velocity prediction)."""

    Config = FlowEulerConfig
    scheduler_class = "FlowMatchEulerDiscreteScheduler"
    prediction_types = frozenset({"flow"})

    def scheduler_overrides(self) -> dict[str, Any]:
        shift = self.config.shift if self.config.shift is not None else self.scheduler_config.get("flow_shift")
        return {} if shift is None else {"shift": shift}  # flow_shift: a flow checkpoint shipping UniPC (Wan)
