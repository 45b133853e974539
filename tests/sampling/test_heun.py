"""Heun (diffusers' HeunDiscreteScheduler): the battery and the diffusers loop where σ starts moderate."""

from __future__ import annotations

from diffusers import HeunDiscreteScheduler

from .battery import SamplerBattery
from .wrapped import LEADING, MatchesDiffusers


class TestHeun(SamplerBattery, MatchesDiffusers):
    name = "heun"
    predicts = {"epsilon", "v_prediction", "sample"}
    cases = {"heun": ({"name": "heun", "timestep_spacing": "leading"}, HeunDiscreteScheduler, LEADING)}
