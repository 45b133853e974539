"""DDPM (diffusers' DDPMScheduler): the battery and the diffusers loop."""

from __future__ import annotations

from diffusers import DDPMScheduler

from .battery import SamplerBattery
from .wrapped import MatchesDiffusers


class TestDDPM(SamplerBattery, MatchesDiffusers):
    name = "ddpm"
    predicts = {"epsilon", "v_prediction", "sample"}
    cases = {"ddpm": ({"name": "ddpm"}, DDPMScheduler, {})}
