"""SDE-DPM-Solver++(2M) (own SDE solver): the battery; the data's law on the analytic Gaussian case; noise per image."""

from __future__ import annotations

import pytest

from ditserve.sampling.sde_dpm_solver_pp import SDEDPMSolverPP, SDEDPMSolverPPConfig

from .battery import SamplerBattery
from .own import CONFIGS
from .sde import assert_reproducible_per_image, assert_samples_the_data_distribution

pytestmark = pytest.mark.usefixtures("one_thread")


class TestSDEDPMSolverPP(SamplerBattery):
    name = "sde-dpm-solver++"
    predicts = {"epsilon", "v_prediction", "flow"}


@CONFIGS
def test_samples_the_data_distribution(scheduler_config):
    assert_samples_the_data_distribution(SDEDPMSolverPP, SDEDPMSolverPPConfig(), scheduler_config)


@CONFIGS
def test_noise_comes_from_each_images_generator(scheduler_config):
    assert_reproducible_per_image(SDEDPMSolverPP, SDEDPMSolverPPConfig(), scheduler_config)
