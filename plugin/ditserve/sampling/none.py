"""No sampler change: the scheduler the checkpoint ships with, as configured there."""

from __future__ import annotations

from typing import Literal

from ditserve.registry import SAMPLERS
from ditserve.sampling.base import PREDICTION_TYPES, SamplerConfig
from ditserve.sampling.diffusers_scheduler import DiffusersSampler


class CheckpointSchedulerConfig(SamplerConfig):
    name: Literal["none"] = "none"


@SAMPLERS.register("none")
class CheckpointScheduler(DiffusersSampler):
    """The checkpoint's own scheduler (its scheduler_config.json), unchanged."""

    Config = CheckpointSchedulerConfig
    prediction_types = frozenset(PREDICTION_TYPES)
    """Whatever the checkpoint was trained for, its own scheduler integrates it."""
