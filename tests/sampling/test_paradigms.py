"""ParaDiGMS: the battery; Picard iteration reaching the sequential result in fewer rounds on the analytic Gaussian
case; window 1 is DDIM; the digits model."""

from __future__ import annotations

import numpy as np
import pytest
from gaussian_data import VP_CONFIG, GaussianData, error

from ditserve.sampling.paradigms import ParaDiGMS, ParaDiGMSConfig

from .battery import SamplerBattery
from .own import CONFIGS, MakesDigits, assert_reaches_the_sequential_result_in_fewer_rounds

pytestmark = pytest.mark.usefixtures("one_thread")


class TestParaDiGMS(SamplerBattery, MakesDigits):
    name = "paradigms"
    predicts = {"epsilon", "v_prediction", "flow"}
    parallel = True

    def digits_plan(self, statistics: str) -> dict:
        return {"name": self.name, "window": 12, "tolerance": 0.02}


def slope(steps: list[int], errors: list[float]) -> float:
    """Fitted order: minus the slope of log error against log steps."""
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.mark.parametrize("tolerance", [None, 1e-3], ids=["default-tolerance", "tight"])
@pytest.mark.parametrize("window", [16, 50])
@CONFIGS
def test_paradigms_reaches_the_sequential_result_in_fewer_rounds(scheduler_config, window, tolerance):
    assert_reaches_the_sequential_result_in_fewer_rounds(ParaDiGMS, ParaDiGMSConfig(window=window), scheduler_config,
                                                         tolerance)  # fmt: skip


def test_sequential_paradigms_is_ddim(tmp_path):
    """window 1 is the DDIM ODE step: on Gaussian data it converges at first order."""
    data = GaussianData(VP_CONFIG)
    solver = ParaDiGMS(ParaDiGMSConfig(window=1, spacing="logsnr"), VP_CONFIG)
    steps = [20, 40, 80, 160]
    assert slope(steps, [error(solver, data, data.noise(2), n) for n in steps]) > 0.7
