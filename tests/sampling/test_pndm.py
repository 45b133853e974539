"""PNDM (diffusers' PNDMScheduler, PLMS steps or with its Runge-Kutta warm-up): the battery and the diffusers loop."""

from __future__ import annotations

from diffusers import PNDMScheduler

from .battery import SamplerBattery
from .wrapped import MatchesDiffusers


class TestPNDM(SamplerBattery, MatchesDiffusers):
    name = "pndm"
    predicts = {"epsilon", "v_prediction"}
    cases = {
        "pndm": ({"name": "pndm"}, PNDMScheduler, {"skip_prk_steps": True}),
        "pndm-prk": ({"name": "pndm", "skip_prk_steps": False}, PNDMScheduler, {"skip_prk_steps": False}),
    }
