"""digits-video-i2v (models/digits/video_i2v.py) and Faster I2V (video/faster_i2v.py) on the shipped weights: the
model takes its first frame, starts as the text-to-video model exactly, and Faster I2V leaves out the image
term where it says it does and nowhere else."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from ditserve.models.digits.moving import CANVAS, FRAMES, clips, native_digits
from ditserve.models.digits.video_i2v import (
    IMAGE_TOKENS,
    MODEL_DIR,
    T2V_DIR,
    FirstFrameAttnProcessor,
    build_from_t2v,
    encode_first_frame,
    encode_prompts,
    generate,
    load,
    text_pipeline,
)
from ditserve.models.text import load_pipeline
from ditserve.models.wan import WanAdapter
from ditserve.quality.metrics import psnr
from ditserve.quality.video import frames_of
from ditserve.video.faster_i2v import FasterI2VConfig, apply_faster_i2v

STEPS = 6
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return load(MODEL_DIR)


@pytest.fixture(scope="module")
def real():
    """Two held-out clips of different digits: an upward 3 and a leftward 8, their first frames, noise."""
    _, _, digits, labels = native_digits()
    index = torch.stack([(labels == 3).nonzero()[0, 0], (labels == 8).nonzero()[0, 0]])
    video = clips(digits[index], torch.tensor([2, 0]), torch.tensor([[2, 3], [7, 6]]))
    noise = torch.randn(2, 1, FRAMES, CANVAS, CANVAS, generator=torch.Generator().manual_seed(0))
    return video, ["moving up", "moving left"], noise


def velocity(pipe, x, sigma: float, prompts, first_frames):
    text, _ = encode_prompts(pipe, prompts, negative=False)
    t = torch.full((x.shape[0],), sigma * 1000)
    image = encode_first_frame(pipe, first_frames)
    return pipe.transformer(x, t, text, encoder_hidden_states_image=image, return_dict=False)[0]


@torch.no_grad()
def test_the_model_takes_its_first_frame(pipe, real):
    video, prompts, noise = real
    given = video[:, :, 0]
    swapped = given.flip(0)
    x = 0.5 * video + 0.5 * noise
    assert (velocity(pipe, x, 0.5, prompts, given) - velocity(pipe, x, 0.5, prompts, swapped)).abs().max() > 0.1
    made = generate(pipe, given, prompts, noise, steps=STEPS)
    assert made.shape == video.shape
    from_swapped = generate(pipe, swapped, prompts, noise, steps=STEPS)  # same noise and prompts, other frames
    assert psnr(frames_of(made), frames_of(from_swapped)).max() < 45  # at the zero-init start: ∞ (identical)


@torch.no_grad()
def test_the_start_of_training_is_the_text_to_video_model(real):
    video, prompts, noise = real
    start = build_from_t2v(T2V_DIR)
    t2v = load_pipeline(WanAdapter(), T2V_DIR, ("WanPipeline",), torch.float32, torch.device("cpu"))
    x, t = 0.5 * video + 0.5 * noise, torch.full((2,), 500.0)
    text, _ = text_pipeline(start).encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=8)
    image = encode_first_frame(start, video[:, :, 0])
    assert image.shape == (2, IMAGE_TOKENS, 64)
    with_image = start.transformer(x, t, text, encoder_hidden_states_image=image, return_dict=False)[0]
    without = t2v.transformer(x, t, text, return_dict=False)[0]
    torch.testing.assert_close(with_image, without, rtol=0, atol=1e-5)


@torch.no_grad()
def test_first_frame_attention_is_diffusers_wan_i2v_attention_at_its_text_length(pipe):
    """diffusers splits the context at 512 text tokens; at that length the two processors agree."""
    attn = pipe.transformer.blocks[1].attn2
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 64, attn.inner_dim, generator=gen)
    context = torch.randn(2, IMAGE_TOKENS + 512, attn.inner_dim, generator=gen)
    ours = FirstFrameAttnProcessor(text_tokens=512)(attn, hidden, context)
    torch.testing.assert_close(ours, WanAttnProcessor()(attn, hidden, context), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["cache", "skip"])
@torch.no_grad()
def test_faster_i2v_leaves_out_the_image_term_from_its_switch_on(pipe, real, mode):
    video, prompts, noise = real
    given = video[:, :, 0]
    full = generate(pipe, given, prompts, noise, steps=STEPS)
    sigmas = pipe.scheduler.sigmas[:STEPS].tolist()
    blocks = len(pipe.transformer.blocks)
    never = apply_faster_i2v(pipe.transformer, FasterI2VConfig(switch_sigma=0.0, mode=mode))
    try:
        assert torch.equal(generate(pipe, given, prompts, noise, steps=STEPS), full)
        assert never.state.computed == STEPS * blocks and never.state.left_out == 0
    finally:
        never.remove()
    switch = (sigmas[2] + sigmas[3]) / 2  # calls 0-2 above it, 3-5 at or below
    x = 0.5 * video + 0.5 * noise
    early, late = velocity(pipe, x, sigmas[1], prompts, given), velocity(pipe, x, sigmas[4], prompts, given)
    faster = apply_faster_i2v(pipe.transformer, FasterI2VConfig(switch_sigma=switch, mode=mode))
    try:
        assert torch.equal(velocity(pipe, x, sigmas[1], prompts, given), early)  # above the switch: the full call
        assert not torch.equal(velocity(pipe, x, sigmas[4], prompts, given), late)
        made = generate(pipe, given, prompts, noise, steps=STEPS)  # starts again at σ = 1: a new run
        assert faster.state.computed == 3 * blocks and faster.state.left_out == 3 * blocks
        with pytest.raises(ValueError, match="already applied"):
            apply_faster_i2v(pipe.transformer)
    finally:
        faster.remove()
    assert not torch.equal(made, full)
    assert psnr(frames_of(made), frames_of(full)).min() > 15  # a late change, not a different video
    assert all(type(block.attn2.processor) is FirstFrameAttnProcessor for block in pipe.transformer.blocks)
