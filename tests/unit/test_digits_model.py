"""The embedded digits DiT: what ships, that its training script reproduces, and that it draws digits."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ditserve.models import BUILTIN_MODELS
from ditserve.quality import classifier_accuracy, frechet_distance, load_classifier
from ditserve.quality.report import measure

CHECKPOINT = BUILTIN_MODELS["digits-dit"]


def test_shipped_checkpoint_is_a_small_diffusers_dit_with_named_labels():
    weights = CHECKPOINT / "transformer" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 16 * 2**20
    config = json.loads((CHECKPOINT / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "DiTTransformer2DModel"
    assert (config["sample_size"] // config["patch_size"]) ** 2 >= 64  # tokens per image
    labels = json.loads((CHECKPOINT / "labels.json").read_text())["id2label"]
    assert labels["7"] == "seven, 7" and labels["0"] == "zero, 0"
    training = json.loads((CHECKPOINT / "training.json").read_text())
    assert training["seed"] == 0 and training["steps"] >= 1000


def train(tmp_path, module: str, subfolder: str, seed: int, name: str) -> dict[str, torch.Tensor]:
    out = tmp_path / name
    args = ["--steps", "3", "--batch-size", "8", "--log-every", "3", "--seed", str(seed), "--threads", "1"]
    done = subprocess.run(
        [sys.executable, "-m", module, *args, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return load_file(out / subfolder / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize(
    "module, subfolder",
    [
        ("ditserve.models.digits.train", "transformer"),
        ("ditserve.models.digits.train_unet", "unet"),
        ("ditserve.models.digits.train_scenes", "transformer"),
        ("ditserve.models.digits.train_video", "transformer"),
    ],
    ids=["dit", "unet", "scenes", "video"],
)
def test_training_is_seeded_and_reproducible(tmp_path, module, subfolder):
    first, again, other = (
        train(tmp_path, module, subfolder, seed, name) for seed, name in [(0, "a"), (0, "b"), (1, "c")]
    )
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_samples_are_the_requested_digits(digits_engine):
    """10 samples per class at the served plan (50 DDIM steps, guidance 4): the classifier agrees."""
    report, images, labels = measure(digits_engine, per_class=10, steps=50, guidance=4.0, seed=123)
    assert report.accuracy >= 0.90, report
    assert min(report.per_class_accuracy) >= 0.7, report
    # The shipped model measures ~91-95 here (~90 at 20 per class; floor: real train vs held-out, 2.7; uniform
    # noise, ~790). The guidance-4 failure mode STACK-NOTES.md describes (speckle without clipped DDIM output)
    # lands far above.
    assert report.frechet_to_held_out < 150, report


def test_the_quality_check_can_fail_on_noise():
    """The check above can fail: noise images score at chance and far away in Fréchet distance."""
    classifier = load_classifier()
    noise = torch.rand(200, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.arange(10).repeat_interleave(20)
    assert classifier_accuracy(noise, labels, classifier) < 0.3
    from ditserve.models.digits.data import load_split

    with torch.no_grad():
        far = frechet_distance(classifier.features(noise), classifier.features(load_split().held_out_images))
    assert far > 100


def test_cli_generate_seven_out_of_the_box(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "ditserve.cli", "generate", "--prompt", "seven", "--seed", "0", "--num-images", "4",
         "-q", "-o", str(tmp_path / "seven.png")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    paths = json.loads(out.stdout)["images"]
    pixels = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255 for p in paths])
    images = torch.from_numpy(pixels)[:, None] * 2 - 1
    assert classifier_accuracy(images, torch.full((4,), 7)) >= 0.75
