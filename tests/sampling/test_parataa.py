"""ParaTAA: the battery; the sequential result in fewer rounds on the analytic Gaussian case, and in fewer rounds
than plain Picard iteration (what its triangular Anderson acceleration is for); the digits model."""

from __future__ import annotations

import pytest
from gaussian_data import GaussianData, run

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


@CONFIGS
def test_anderson_acceleration_needs_fewer_rounds_than_plain_picard_iteration(scheduler_config):
    """Over the whole trajectory at a tight tolerance, plain Picard iteration (ParaDiGMS with the same window and
    tolerance) took 11 rounds for 50 steps and ParaTAA 7 (epsilon) / 8 (flow); ParaTAA with its acceleration
    replaced by the Picard update takes Picard's 11, and fails here."""
    data = GaussianData(scheduler_config)
    noise = data.noise(4)
    rounds = {}
    for name, sampler in (
        ("parataa", ParaTAA(ParaTAAConfig(tolerance=1e-3), scheduler_config)),
        ("picard", ParaDiGMS(ParaDiGMSConfig(window=50, tolerance=1e-3), scheduler_config)),
    ):
        calls: list[int] = []
        run(sampler, data, noise, 50, calls)
        rounds[name] = len(calls)
    assert rounds["parataa"] <= 0.8 * rounds["picard"], rounds
