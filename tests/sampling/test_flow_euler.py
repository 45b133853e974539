"""Flow-matching Euler (diffusers' FlowMatchEulerDiscreteScheduler): the battery and the diffusers loop; a
diffusion model is refused at engine load."""

from __future__ import annotations

import pytest
from diffusers import FlowMatchEulerDiscreteScheduler
from ditserve_testing import engine_for

from ditserve.errors import PlanError

from .battery import SamplerBattery
from .wrapped import MatchesDiffusers


class TestFlowEuler(SamplerBattery, MatchesDiffusers):
    name = "flow-euler"
    predicts = {"flow"}
    flow_cases = {
        "flow-euler": ({"name": "flow-euler"}, FlowMatchEulerDiscreteScheduler, {}),
        "flow-euler-shift": ({"name": "flow-euler", "shift": 1.5}, FlowMatchEulerDiscreteScheduler, {"shift": 1.5}),
    }


def test_a_mismatched_sampler_fails_at_engine_load(tiny_flow_dit_dir, tiny_dit_dir):
    with pytest.raises(PlanError, match="predicts 'flow'.*choose a sampler that supports 'flow'"):
        engine_for(tiny_flow_dit_dir, sampler={"name": "pndm"})
    with pytest.raises(PlanError, match="predicts 'epsilon', and 'flow-euler' supports flow"):
        engine_for(tiny_dit_dir, sampler={"name": "flow-euler"})
