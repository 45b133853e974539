"""The engine makes videos: the embedded video model digits-video (Wan, pixel space) served as diffusers' WanPipeline
runs it on the same noise, its frame count checked against the model and the config's `limits.max_frames`."""

from __future__ import annotations

import pytest
import torch

from ditserve.config import load_config
from ditserve.errors import RequestError
from ditserve.request import GenerationRequest

CONFIG = "builtin:digits-video"
PROMPT = "a seven moving left"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def video_engine():
    from ditserve.engine import Engine

    return Engine(load_config(CONFIG))


def reference_videos(engine, seeds: list[int], steps: int, guidance: float, frames: int) -> torch.Tensor:
    """WanPipeline's videos from the engine's starting noise (one generator per video, seed + k), in [0, 1] as
    (N, frames, C, H, W); without a VAE the pipeline's latents are the frames in [-1, 1]."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(engine.model.path, local_files_only=True, vae=None)
    pipe.set_progress_bar_config(disable=True)
    height, width = engine.adapter.default_size(engine.model)
    shape = engine.adapter.latent_shape(engine.model, height, width, frames=frames)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds])
    with torch.inference_mode():
        latents = pipe(
            [PROMPT] * len(seeds),
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=noise,
            max_sequence_length=engine.model.components["pipeline"].call_defaults["max_sequence_length"],
            output_type="latent",
        ).frames
    return ((latents + 1) / 2).clamp(0, 1).transpose(1, 2)


@pytest.mark.parametrize("frames", [None, 12])
def test_engine_videos_are_the_pipelines(video_engine, frames):
    request = GenerationRequest(prompt=PROMPT, seed=5, num_images=2, steps=3, guidance_scale=4.0, num_frames=frames)
    result = video_engine.generate(request)
    expected_frames = frames or video_engine.adapter.default_frames(video_engine.model)
    assert result.images is None
    assert result.videos.shape == (2, expected_frames, 1, 16, 16) and result.videos.dtype == torch.float32
    expected = reference_videos(video_engine, [5, 6], 3, 4.0, expected_frames)
    difference = (result.videos - expected).abs().max().item()
    # The pipeline calls the transformer once per guidance branch, the engine once on both: float rounding only
    # (7.5e-6 to 1.9e-5 measured over 8, 12 and 16 frames and two seeds).
    assert difference <= 5e-5, f"the engine's videos differ from the pipeline's by up to {difference:.2e}"
    # CFG rows × videos × tokens × 3 token layers (self-attention, cross-attention, feed-forward) × 4 blocks
    tokens_per_call = 2 * 2 * expected_frames * 64 * 3 * 4
    assert result.stats.token_evaluations == result.stats.token_evaluations_full == 3 * tokens_per_call


def test_num_frames_defaults_to_the_checkpoints_and_is_bounded(video_engine):
    limit = video_engine.config.limits.max_frames
    job = video_engine.validate(GenerationRequest(prompt=PROMPT))
    assert job.frames == 8 and job.latent_shape(video_engine.model) == (1, 8, 16, 16)
    assert video_engine.validate(GenerationRequest(prompt=PROMPT, num_frames=limit)).frames == limit
    with pytest.raises(RequestError, match=f"must be at most {limit}") as refused:
        video_engine.validate(GenerationRequest(prompt=PROMPT, num_frames=limit + 1))
    assert refused.value.field == "num_frames"
    with pytest.raises(RequestError, match="take no init image") as refused:
        video_engine.validate(GenerationRequest(prompt=PROMPT, init_image=b"\x89PNG"))
    assert refused.value.field == "init_image"


def test_an_image_model_refuses_num_frames():
    from ditserve.engine import Front, load_model

    config = load_config("builtin:digits-flow")
    front = Front(config, load_model(config, torch.device("meta")))
    assert front.validate(GenerationRequest(prompt="a seven")).frames is None
    with pytest.raises(RequestError, match="makes images; leave num_frames out") as refused:
        front.validate(GenerationRequest(prompt="a seven", num_frames=8))
    assert refused.value.field == "num_frames"
