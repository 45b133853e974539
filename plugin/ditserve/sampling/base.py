"""What a sampler is: a config (with its step count) and `sample`, which owns the denoising loop.

The sampler owns the whole loop, not one step, so that solvers which evaluate several timesteps at
once (parallel sampling) fit the same interface as the classic step-by-step schedulers. It sees the
model only through `denoise(x, t)`, which already applies classifier-free guidance and caching.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from ditserve.errors import PlanError
from ditserve.registry import Strategy, StrategyConfig

if TYPE_CHECKING:  # torch is imported by whoever runs a sampler; validating a config needs none of it
    import torch

Denoise = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""`denoise(x, t) -> model output` for a batch `x` at timestep(s) `t` (a 0-d or (batch,) tensor)."""
OnStep = Callable[[int, int, "torch.Tensor"], None]
"""`on_step(steps_done, total_steps, x)` after every step; raising from it stops the loop (cancellation)."""

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


def prediction_type(scheduler_config: dict) -> str:
    """What the model predicts, read from its scheduler config: epsilon, v_prediction, sample or flow."""
    if str(scheduler_config.get("_class_name", "")).startswith("FlowMatch"):
        return "flow"
    kind = scheduler_config.get("prediction_type", "epsilon")
    return "flow" if kind == "flow_prediction" else kind  # Wan ships UniPC configured for flow prediction


class SamplerConfig(StrategyConfig):
    """Base of sampler configs."""

    steps: int = Field(50, ge=1, le=1000)
    """Default number of denoising steps (a request may ask for another number within the limits)."""


class Sampler(Strategy):
    """Turns noise into a sample by repeatedly calling the model."""

    Config = SamplerConfig
    prediction_types: ClassVar[frozenset[str]] = frozenset()
    """The model prediction types this sampler can integrate; others are refused at load."""
    mixes_in_batch: ClassVar[bool] = False
    """Whether its requests may share model calls with other requests at other steps (continuous batching,
    `ditserve.continuous`): `sample` keeps its state in locals, so several runs on one instance at once do not
    interfere, and calls `denoise` once per step on its own images."""

    def __init__(self, config: SamplerConfig, scheduler_config: dict) -> None:
        super().__init__(config)
        self.scheduler_config = dict(scheduler_config)
        kind = prediction_type(self.scheduler_config)
        if kind not in self.prediction_types:
            raise PlanError(
                f"sampler {self.name!r} cannot run this model: it predicts {kind!r}, and {self.name!r} supports "
                f"{', '.join(sorted(self.prediction_types))}; choose a sampler that supports {kind!r} "
                "(`ditserve strategies` lists them)"
            )

    @property
    def parallel_in_time(self) -> bool:
        """Whether one model call evaluates several steps of the trajectory at once (ParaDiGMS, ParaTAA).
        A cache decides per model call, taking it for one step, so the engine refuses a cache beside it."""
        return False

    def sample(
        self,
        denoise: Denoise,
        noise: torch.Tensor,
        steps: int,
        generators: list[torch.Generator],
        on_step: OnStep,
        schedule: dict | None = None,
    ) -> torch.Tensor:
        """Integrate from `noise` to a clean sample in `steps` steps; one generator per batch item.

        `schedule` holds the family's per-request timestep settings (e.g. Flux's resolution-dependent
        shift `mu`), as `FamilyAdapter.schedule_kwargs` gives them.
        """
        raise NotImplementedError
