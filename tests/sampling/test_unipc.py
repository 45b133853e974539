"""UniPC (diffusers' UniPCMultistepScheduler, orders 1-3): the battery and the diffusers loop on a diffusion and a
flow-matching model."""

from __future__ import annotations

import pytest
from diffusers import UniPCMultistepScheduler

from .battery import SamplerBattery
from .wrapped import FEW_STEP, FLOW, THRESHOLDED, MatchesDiffusers, assert_matches_the_pipeline_loop


class TestUniPC(SamplerBattery, MatchesDiffusers):
    name = "unipc"
    predicts = {"epsilon", "v_prediction", "sample", "flow"}
    cases = {
        f"unipc-{order}": (
            {"name": "unipc", "order": order},
            UniPCMultistepScheduler,
            {**THRESHOLDED, "solver_order": order},
        )
        for order in (1, 2, 3)
    }
    flow_cases = {
        "unipc": ({"name": "unipc"}, UniPCMultistepScheduler, {**FLOW, **FEW_STEP}),
        "unipc-3": ({"name": "unipc", "order": 3}, UniPCMultistepScheduler, {**FLOW, **FEW_STEP, "solver_order": 3}),
    }


def test_the_comparison_sees_a_wrong_setting(tiny_dit_dir):
    """The exact comparison fails when the wrapper and the reference differ in one setting (order 2 vs 3)."""
    with pytest.raises(AssertionError):
        assert_matches_the_pipeline_loop(
            tiny_dit_dir, {"name": "unipc", "order": 2}, UniPCMultistepScheduler, {**THRESHOLDED, "solver_order": 3}
        )
