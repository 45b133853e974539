"""The embedded digits U-Net: what ships and that it draws digits (its training script's reproducibility is tested
with digits-dit's, in test_digits_model.py)."""

from __future__ import annotations

import json

import pytest

from ditserve.models import BUILTIN_MODELS
from ditserve.quality.report import measure

CHECKPOINT = BUILTIN_MODELS["digits-unet"]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_shipped_checkpoint_is_a_small_class_conditional_diffusers_unet():
    weights = CHECKPOINT / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 4 * 2**20
    config = json.loads((CHECKPOINT / "unet" / "config.json").read_text())
    assert config["_class_name"] == "UNet2DModel" and config["sample_size"] == 16 and config["in_channels"] == 1
    assert config["num_class_embeds"] == 11  # the ten digits and the null class
    assert json.loads((CHECKPOINT / "labels.json").read_text())["id2label"]["7"] == "seven, 7"
    training = json.loads((CHECKPOINT / "training.json").read_text())
    assert training["seed"] == 0 and training["steps"] >= 1000


@pytest.fixture(scope="module")
def unet_engine():
    from ditserve.engine import Engine

    return Engine.from_config("builtin:digits-unet")


def test_samples_are_the_requested_digits(unet_engine):
    """10 samples per class at the served plan (50 DDIM steps, guidance 4): the classifier agrees. The shipped
    model measures accuracy 1.0 and Fréchet distance 44 on 500 samples (benchmarks/results/quality-baseline-unet.md;
    digits-dit: 92); noise lands far above 100."""
    report, _, _ = measure(unet_engine, per_class=10, steps=50, guidance=4.0, seed=123)
    assert report.accuracy >= 0.90 and min(report.per_class_accuracy) >= 0.7, report
    assert report.frechet_to_held_out < 100, report
