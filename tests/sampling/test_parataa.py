"""ParaTAA: the battery; the sequential result in fewer rounds on the analytic Gaussian case, and in fewer rounds
than plain Picard iteration (what its triangular Anderson acceleration is for); the digits model."""

from __future__ import annotations

import pytest
from gaussian_data import VP_CONFIG, GaussianData, run

from ditserve.sampling.paradigms import ParaDiGMS, ParaDiGMSConfig
from ditserve.sampling.parataa import ParaTAA, ParaTAAConfig

from .battery import SamplerBattery
from .own import CONFIGS, MakesDigits, assert_reaches_the_sequential_result_in_fewer_rounds

pytestmark = pytest.mark.usefixtures("one_thread")


class TestParaTAA(SamplerBattery, MakesDigits):
    name = "parataa"
    predicts = {"epsilon", "v_prediction", "flow"}
    parallel = True

    def digits_plan(self, statistics: str) -> dict:
        return {"name": self.name, "tolerance": 0.02}


@pytest.mark.parametrize("tolerance", [None, 1e-3], ids=["default-tolerance", "tight"])
@CONFIGS
def test_parataa_reaches_the_sequential_result_in_fewer_rounds(scheduler_config, tolerance):
    assert_reaches_the_sequential_result_in_fewer_rounds(ParaTAA, ParaTAAConfig(), scheduler_config, tolerance)


class GuidedGaussianData(GaussianData):
    """Gaussian data under classifier-free guidance: uncond + w·(cond − uncond) of two Gaussian models. The guided
    map is far from contracting at w = 4, so plain Picard iteration needs about half as many rounds as steps:
    room for an acceleration to show."""

    def __init__(self, scheduler_config: dict, guidance: float = 4.0) -> None:
        super().__init__(scheduler_config)
        self.unconditional = GaussianData(scheduler_config, seed=5, spread=2.0)
        self.guidance = guidance

    def denoise(self, x, t):
        uncond = self.unconditional.denoise(x, t)
        return uncond + self.guidance * (super().denoise(x, t) - uncond)


def rounds(sampler, data: GaussianData, steps: int = 50) -> int:
    calls: list[int] = []
    run(sampler, data, data.noise(4), steps, calls)
    return len(calls)


@pytest.mark.parametrize(("window", "fewer"), [(None, 0.7), (16, 0.8)], ids=["whole-trajectory", "sliding-window"])
@CONFIGS
def test_anderson_acceleration_needs_fewer_rounds_than_plain_picard_iteration(scheduler_config, window, fewer):
    """Same window, same tolerance (1e-3 σ), guided Gaussian problem, 50 steps. Measured: whole trajectory ParaTAA
    14 rounds against Picard's 23 (24 flow); window 16, where the window slides and each point must carry its
    history across rounds as the paper's TAA does, 18 against 23 (24). Picard fails both; so does an Anderson step
    that restarts its history whenever the window slides (20 / 21 at window 16)."""
    data = GuidedGaussianData(scheduler_config)
    taa = rounds(ParaTAA(ParaTAAConfig(window=window, tolerance=1e-3), scheduler_config), data)
    picard = rounds(ParaDiGMS(ParaDiGMSConfig(window=window or 50, tolerance=1e-3), scheduler_config), data)
    assert taa <= fewer * picard, (taa, picard)


def test_the_safeguard_bounds_the_rounds_by_the_steps():
    """Whatever the acceleration does, the first unfinished point is updated by Picard (exact), so a round always
    finishes a step: with a tolerance no residual meets, the solve takes exactly one round per step."""
    data = GuidedGaussianData(VP_CONFIG, guidance=7.0)
    assert rounds(ParaTAA(ParaTAAConfig(window=8, tolerance=1e-12), VP_CONFIG), data, steps=20) == 20
