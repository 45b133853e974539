"""The embedded text-to-image flow model digits-flow: what ships, that its training is seeded, that the engine
serves it as diffusers' SD3 pipeline runs it, and that prompts choose the digit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ditserve.calibrate import EXAMPLE_PROMPTS_FILE, calibration_requests
from ditserve.models import BUILTIN_MODELS
from ditserve.models.digits.prompts import all_prompts, example_prompts, prompt_for
from ditserve.quality import load_classifier
from ditserve.request import GenerationRequest

CHECKPOINT = BUILTIN_MODELS["digits-flow"]
TRAINED = ("transformer", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def flow_engine():
    from ditserve.engine import Engine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Engine.from_config("builtin:digits-flow")
    torch.set_num_threads(threads)


def test_shipped_checkpoint_is_a_small_sd3_pipeline_with_its_own_tokenizer():
    index = json.loads((CHECKPOINT / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["vae"] == index["text_encoder_3"] == [None, None]  # pixel space, no T5
    weights = [CHECKPOINT / part / "model.safetensors" for part in TRAINED[1:]]
    weights.append(CHECKPOINT / "transformer" / "diffusion_pytorch_model.safetensors")
    assert sum(w.stat().st_size for w in weights) <= 16 * 2**20
    assert json.loads((CHECKPOINT / "call_defaults.json").read_text()) == {"max_sequence_length": 0}
    training = json.loads((CHECKPOINT / "training.json").read_text())
    assert training["seed"] == 0 and training["steps"] >= 1000

    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(CHECKPOINT / "tokenizer")
    words = {w for prompt in all_prompts() for w in prompt.replace(",", " , ").split()}
    assert all(tokenizer.tokenize(w) == [w + "</w>"] for w in words)  # every prompt word is one token
    assert tokenizer.tokenize("xyz") == ["x", "y", "z</w>"]  # other text falls back to characters


def train(tmp_path, seed: int, name: str) -> dict[str, torch.Tensor]:
    from ditserve.models.digits.train_flow import main

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    args = ["--steps", "2", "--batch-size", "4", "--log-every", "2", "--seed", str(seed), "--threads", "1"]
    try:
        main([*args, "--out", str(tmp_path / name)])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return {
        f"{part}.{key}": value
        for part in TRAINED
        for key, value in load_file(next((tmp_path / name / part).glob("*.safetensors"))).items()
    }


def test_training_is_seeded_and_reproducible(tmp_path):
    first, again, other = train(tmp_path, 0, "a"), train(tmp_path, 0, "b"), train(tmp_path, 1, "c")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert json.loads((tmp_path / "a" / EXAMPLE_PROMPTS_FILE).read_text()) == example_prompts()


def test_the_engine_runs_what_the_diffusers_pipeline_runs(flow_engine):
    """Same prompt, seeds and 4 flow-matching Euler steps at guidance 4: the engine and diffusers' own
    StableDiffusion3Pipeline (prompt → tokens → CLIP encoders → MMDiT) agree."""
    from diffusers import StableDiffusion3Pipeline

    result = flow_engine.generate(GenerationRequest(prompt="a handwritten seven", seed=5, num_images=2, steps=4))
    assert result.images.shape == (2, 1, 16, 16)
    pipe = StableDiffusion3Pipeline.from_pretrained(
        CHECKPOINT, vae=None, text_encoder_3=None, tokenizer_3=None, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    noise = torch.stack([torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    with torch.inference_mode():
        latents = pipe(
            "a handwritten seven",
            num_images_per_prompt=2,
            num_inference_steps=4,
            guidance_scale=4.0,
            latents=noise,
            max_sequence_length=0,
            output_type="latent",
        ).images
    torch.testing.assert_close(result.images, ((latents + 1) / 2).clamp(0, 1), rtol=0, atol=1e-5)


def test_prompts_choose_the_digit(flow_engine):
    """4 steps: words and numerals alike give the digit they name (the digits classifier judges)."""
    classifier = load_classifier()
    prompts = {"a handwritten seven": 7, "3": 3, "the number zero": 0, "digit five": 5}
    for prompt, digit in prompts.items():
        images = flow_engine.generate(GenerationRequest(prompt=prompt, seed=0, num_images=4, steps=4)).images
        with torch.no_grad():
            predicted = classifier(images * 2 - 1).argmax(dim=1)
        assert (predicted == digit).sum() >= 3, (prompt, predicted.tolist())


def test_sampler_calibration_prompts_the_model_with_its_training_prompts(flow_engine):
    """`ditserve calibrate --sampler` runs the prompts the checkpoint ships (every digit in turn), not the stock
    ones ("a photo of a cat"), which this model never saw: statistics measured on those mislead the sampler."""
    assert json.loads((CHECKPOINT / EXAMPLE_PROMPTS_FILE).read_text()) == example_prompts()
    requests = calibration_requests(flow_engine, 12)
    assert [r.prompt for r in requests] == [prompt_for(d, 0) for d in range(10)] + [prompt_for(0, 1), prompt_for(1, 1)]
    assert len({r.seed for r in requests}) == 12
