"""Ancestral Euler (own SDE solver): the battery; the data's law on the analytic Gaussian case; noise per image."""

from __future__ import annotations

import pytest

from ditserve.sampling.euler_ancestral import EulerAncestral, EulerAncestralConfig

from .battery import SamplerBattery
from .own import CONFIGS
from .sde import assert_reproducible_per_image, assert_samples_the_data_distribution

pytestmark = pytest.mark.usefixtures("one_thread")


class TestEulerAncestral(SamplerBattery):
    name = "euler-ancestral"
    predicts = {"epsilon", "v_prediction", "flow"}


@CONFIGS
def test_samples_the_data_distribution(scheduler_config):
    assert_samples_the_data_distribution(EulerAncestral, EulerAncestralConfig(), scheduler_config)


@CONFIGS
def test_noise_comes_from_each_images_generator(scheduler_config):
    assert_reproducible_per_image(EulerAncestral, EulerAncestralConfig(), scheduler_config)
