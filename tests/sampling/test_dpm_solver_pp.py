"""DPM-Solver++ (diffusers' DPMSolverMultistepScheduler: 2M, 3M, SDE): the battery and the diffusers loop on a
diffusion and a flow-matching model."""

from __future__ import annotations

from diffusers import DPMSolverMultistepScheduler

from .battery import SamplerBattery
from .wrapped import FEW_STEP, FLOW, THRESHOLDED, MatchesDiffusers


class TestDPMSolverPP(SamplerBattery, MatchesDiffusers):
    name = "dpm-solver++"
    predicts = {"epsilon", "v_prediction", "sample", "flow"}
    cases = {
        "2m": ({"name": "dpm-solver++"}, DPMSolverMultistepScheduler, {**THRESHOLDED, "solver_order": 2}),
        "3m": (
            {"name": "dpm-solver++", "variant": "3M"},
            DPMSolverMultistepScheduler,
            {**THRESHOLDED, "solver_order": 3},
        ),
        "sde": (
            {"name": "dpm-solver++", "variant": "SDE"},
            DPMSolverMultistepScheduler,
            {**THRESHOLDED, "algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        ),
    }
    flow_cases = {
        "2m": ({"name": "dpm-solver++"}, DPMSolverMultistepScheduler, {**FLOW, **FEW_STEP}),
        "3m": (
            {"name": "dpm-solver++", "variant": "3M"},
            DPMSolverMultistepScheduler,
            {**FLOW, **FEW_STEP, "solver_order": 3},
        ),
        "sde": (
            {"name": "dpm-solver++", "variant": "SDE"},
            DPMSolverMultistepScheduler,
            {**FLOW, **FEW_STEP, "algorithm_type": "sde-dpmsolver++"},
        ),
    }
