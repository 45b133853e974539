"""`none`: the checkpoint's own scheduler, which fits every model it ships with (any prediction type)."""

from __future__ import annotations

from diffusers import DDPMScheduler

from ditserve.sampling.base import PREDICTION_TYPES

from .battery import SamplerBattery
from .wrapped import MatchesDiffusers


class TestCheckpointScheduler(SamplerBattery, MatchesDiffusers):
    name = "none"
    predicts = set(PREDICTION_TYPES)
    cases = {"none": ({"name": "none"}, DDPMScheduler, {})}
