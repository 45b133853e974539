"""FIFO-Diffusion (video/fifo.py) on an untrained digits-video pipeline, where only the bookkeeping matters: the
count and order of the frames that leave, the diagonal of levels each model call sees, the ordinary sampler as
the one-level case, seeds, streaming."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ditserve.video.fifo import (
    FifoConfig,
    FifoCounts,
    diagonal_step,
    fifo_frames,
    fifo_video,
    guided_velocity,
    level_schedule,
    sample_clip,
    window_starts,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a seven moving left", "3 moving up"]
CONFIG = FifoConfig(window=4, partitions=2, start="noise", guidance_scale=1.0)
"""A queue of S = 8 levels in windows of 4 frames (small enough for milliseconds per call), from pure noise."""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """digits-video's pipeline with its initial weights, saved and loaded as the checkpoint would be."""
    from ditserve.models.digits.train_video import CALL_DEFAULTS, build_pipeline
    from ditserve.models.digits.training import save_pipeline
    from ditserve.models.wan import WanAdapter

    torch.manual_seed(0)
    out: Path = tmp_path_factory.mktemp("digits-video-initial")
    save_pipeline(build_pipeline(), out, {}, CALL_DEFAULTS, PROMPTS)
    return WanAdapter().load(out, torch.float32, torch.device("cpu"))


@contextlib.contextmanager
def transformer_inputs(model):
    """Record what every transformer call receives: (hidden states, per-frame σ as (rows, frames))."""
    calls = []

    def record(module, args, kwargs):
        x, t = kwargs["hidden_states"], kwargs["timestep"]
        calls.append((x.clone(), t[:, :: t.shape[1] // x.shape[2]] / 1000))

    hook = model.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        hook.remove()


def expected_sigmas(model, config: FifoConfig, iteration: int) -> torch.Tensor:
    """σ of every frame of every window (windows, window) in `iteration` (−(S − 1) … −1 warm-up, then ≥ 0),
    written out from the schedule: diagonal position q at level min(S, q + 1 − min(iteration, 0)), a front
    position at 0 once a frame has left into it, else at S (noise)."""
    steps, front = config.steps, config.front
    levels = []
    for p in range(front + steps):
        if p >= front:
            levels.append(min(steps, p - front + 1 - min(iteration, 0)))
        else:
            levels.append(0 if iteration - (front - p) >= 0 else steps)
    sigmas = level_schedule(model, steps)[torch.tensor(levels)]
    stride = config.window // 2 if config.lookahead else config.window
    return torch.stack([sigmas[s : s + config.window] for s in range(0, front + steps - config.window + 1, stride)])


@pytest.mark.parametrize("lookahead", [True, False], ids=["lookahead", "plain"])
def test_each_call_sees_the_scheduled_diagonal(model, lookahead):
    """The per-frame timesteps that reach the transformer, call by call (warm-up pyramid, then the diagonal)."""
    config = replace(CONFIG, lookahead=lookahead)
    counts = FifoCounts()
    frames = 4  # past the point where the front holds only frames that left
    with transformer_inputs(model) as calls:
        fifo_video(model, PROMPTS, frames, [0, 1], config, counts)
    iterations = range(-(config.steps - 1), frames)
    assert len(calls) == counts.calls == len(iterations)
    windows = 2 * config.partitions if lookahead else config.partitions
    assert counts.window_evaluations == counts.calls * len(PROMPTS) * windows
    for (_, sigma), iteration in zip(calls, iterations, strict=True):
        expected = expected_sigmas(model, config, iteration).repeat_interleave(len(PROMPTS), dim=0)
        torch.testing.assert_close(sigma, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("lookahead", [True, False], ids=["lookahead", "plain"])
def test_a_frame_is_stepped_by_the_window_where_it_is_in_the_later_half(model, lookahead):
    """One steady-state iteration on a random queue equals stepping each window on its own and keeping its later
    half (its whole self without lookahead); the front stays as it was."""
    config = replace(CONFIG, lookahead=lookahead)
    velocity = guided_velocity(model, PROMPTS, 1.0, FifoCounts())
    sigmas = level_schedule(model, config.steps)
    positions = config.front + config.steps
    queue = torch.randn(2, 1, positions, 16, 16, generator=torch.Generator().manual_seed(0))
    level = torch.cat([torch.zeros(config.front, dtype=torch.long), torch.arange(1, config.steps + 1)])
    target = (level - 1).clamp(min=0)
    with torch.no_grad():
        stepped = diagonal_step(velocity, queue, sigmas[level], sigmas[target], config)
        expected = queue.clone()
        kept = config.window // 2 if lookahead else 0
        for s in window_starts(config):
            span = slice(s, s + config.window)
            sigma = sigmas[level[span]].expand(2, -1)
            v = velocity(queue[:, :, span], sigma)
            for f in range(kept, config.window):
                dt = sigmas[target[s + f]] - sigmas[level[s + f]]
                expected[:, :, s + f] = queue[:, :, s + f] + dt * v[:, :, f]
    torch.testing.assert_close(stepped, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(stepped[:, :, : config.front], queue[:, :, : config.front], rtol=0, atol=0)


def test_frames_leave_in_order_and_stream(model):
    """The first frame comes out after the warm-up's S − 1 calls and one more, then one per call; each frame that
    leaves is the one the next call sees just before the head (lookahead's front), so frames leave from the head in
    order; a longer video continues a shorter one frame for frame, and the count is as asked."""
    counts = FifoCounts()
    with transformer_inputs(model) as calls:
        stream = fifo_frames(model, PROMPTS, 7, [0, 1], CONFIG, counts)
        first = next(stream)
        assert first.shape == (2, 1, 16, 16)
        assert counts.calls == CONFIG.steps
        rest = list(stream)
    assert len(rest) == 6 and counts.calls == CONFIG.steps - 1 + 7
    for k, frame in enumerate([first, *rest[:-1]]):
        seen_next = calls[CONFIG.steps + k][0][: len(PROMPTS), :, CONFIG.front - 1]  # window 0, the front's last frame
        torch.testing.assert_close(seen_next, frame, rtol=0, atol=0)
    shorter = fifo_video(model, PROMPTS, 4, [0, 1], CONFIG)
    torch.testing.assert_close(torch.stack([first, *rest[:3]], dim=2), shorter, rtol=0, atol=0)


def test_seeds_reproduce(model):
    video = fifo_video(model, PROMPTS, 2, [5, 6], CONFIG)
    torch.testing.assert_close(fifo_video(model, PROMPTS, 2, [5, 6], CONFIG), video, rtol=0, atol=0)
    other = fifo_video(model, PROMPTS, 2, [5, 7], CONFIG)
    torch.testing.assert_close(other[0], video[0], rtol=0, atol=1e-6)
    assert (other[1] - video[1]).abs().max() > 0.1


def test_one_window_at_one_level_is_the_ordinary_sampler(model):
    """All frames of one window at the same level, stepped down the whole schedule with guidance, are what
    diffusers' WanPipeline makes from the same noise (per-frame timesteps equal to its one timestep)."""
    steps, guidance, frames = 4, 4.0, 8
    noise = torch.randn(2, 1, frames, 16, 16, generator=torch.Generator().manual_seed(3))
    velocity = guided_velocity(model, PROMPTS, guidance, FifoCounts())
    with torch.no_grad():
        ours = sample_clip(velocity, noise, level_schedule(model, steps))
        pipe = model.components["pipeline"]
        reference = pipe(
            PROMPTS,
            negative_prompt="",
            height=16,
            width=16,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=noise.clone(),
            max_sequence_length=pipe.call_defaults["max_sequence_length"],
            output_type="latent",
        ).frames
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_start_from_a_base_video(model):
    """The paper's start: the queue is a sampled clip noised diagonally; the same frames come out, as asked."""
    config = replace(CONFIG, start="video")
    counts = FifoCounts()
    with transformer_inputs(model) as calls:
        video = fifo_video(model, PROMPTS, 5, [0, 1], config, counts)
    assert video.shape == (2, 1, 5, 16, 16) and torch.isfinite(video).all()
    base_calls, dropped = config.steps, config.steps - config.window
    assert len(calls) == counts.calls == base_calls + dropped + 5
    assert all((sigma == sigma[:, :1]).all() for _, sigma in calls[:base_calls])  # the base clip: one level
    first_diagonal = calls[base_calls][1][: len(PROMPTS), config.front :]
    expected = expected_sigmas(model, config, 0)[0, config.front :].expand(len(PROMPTS), -1)
    torch.testing.assert_close(first_diagonal, expected, rtol=0, atol=1e-6)
