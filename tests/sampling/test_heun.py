"""Heun (diffusers' HeunDiscreteScheduler): the battery and the diffusers loop."""

from __future__ import annotations

from diffusers import HeunDiscreteScheduler

from .battery import SamplerBattery
from .wrapped import FEW_STEP, MatchesDiffusers


class TestHeun(SamplerBattery, MatchesDiffusers):
    name = "heun"
    predicts = {"epsilon", "v_prediction", "sample"}
    cases = {"heun": ({"name": "heun"}, HeunDiscreteScheduler, FEW_STEP)}
