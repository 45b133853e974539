"""DPM-Solver (diffusers' multistep and singlestep schedulers, orders 1-3): the battery and the diffusers loop."""

from __future__ import annotations

from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler

from .battery import SamplerBattery
from .wrapped import FEW_STEP, THRESHOLDED, MatchesDiffusers


class TestDPMSolver(SamplerBattery, MatchesDiffusers):
    name = "dpm-solver"
    predicts = {"epsilon", "v_prediction", "sample"}
    cases = {
        f"dpm-solver-{order}{'m' if multistep else 's'}": (
            {"name": "dpm-solver", "order": order, "multistep": multistep},
            DPMSolverMultistepScheduler if multistep else DPMSolverSinglestepScheduler,
            {
                **(THRESHOLDED if multistep else FEW_STEP),
                "algorithm_type": "dpmsolver",
                "final_sigmas_type": "sigma_min",
                "solver_order": order,
            },
        )
        for order in (1, 2, 3)
        for multistep in (True, False)
    }
