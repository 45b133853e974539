"""Euler (diffusers' EulerDiscreteScheduler, optionally on Karras sigmas): the battery and the diffusers loop."""

from __future__ import annotations

from diffusers import EulerDiscreteScheduler

from .battery import SamplerBattery
from .wrapped import FEW_STEP, LEADING, MatchesDiffusers


class TestEuler(SamplerBattery, MatchesDiffusers):
    name = "euler"
    predicts = {"epsilon", "v_prediction", "sample"}
    cases = {
        "euler": ({"name": "euler", "timestep_spacing": "leading"}, EulerDiscreteScheduler, LEADING),
        "euler-karras": (
            {"name": "euler", "karras_sigmas": True},
            EulerDiscreteScheduler,
            {**FEW_STEP, "use_karras_sigmas": True},
        ),
    }
