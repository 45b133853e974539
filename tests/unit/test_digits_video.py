"""The moving-digits clips and the measures that judge generated videos (models/digits/moving.py,
quality/video.py): real clips score at the ceiling, and each measure falls on the fault it is there to see."""

from __future__ import annotations

import pytest
import torch

from ditserve.models.digits.moving import (
    CANVAS,
    MOTIONS,
    clips,
    digit_crops,
    displacement,
    locate,
    native_digits,
    random_clips,
)
from ditserve.models.digits.video_prompts import build_tokenizer, example_clips, example_prompts, prompt_for
from ditserve.quality.video import judge


@pytest.fixture(scope="module")
def held_out():
    _, _, digits, labels = native_digits()
    return digits, labels


@pytest.fixture(scope="module")
def real(held_out):
    digits, labels = held_out
    return random_clips(digits, labels, torch.arange(120), torch.Generator().manual_seed(0), frames=12)


def test_a_clip_moves_one_pixel_per_frame_on_a_wrapping_canvas(held_out):
    digits = held_out[0][:1]
    video = clips(digits, torch.tensor([0]), torch.tensor([[3, 12]]), frames=6)  # left, starting at column 12
    assert video.shape == (1, 1, 6, CANVAS, CANVAS)
    for f in range(6):
        column = (12 - f) % CANVAS  # wraps past column 0 at frame 5 and keeps the whole digit
        expected = video[0, :, 0].roll(shifts=(0, column - 12), dims=(-2, -1))
        assert torch.equal(video[0, :, f], expected)
        assert torch.equal(digit_crops(video[0, :, f][None])[0], digits[0])
    assert torch.equal(locate(video[0].transpose(0, 1)), torch.tensor([[3, (12 - f) % CANVAS] for f in range(6)]))


def test_displacement_reads_every_motion_and_its_reverse(real):
    videos, _, motions = real
    before, after = videos[:, :, 0], videos[:, :, 1]
    steps = torch.tensor(list(MOTIONS.values()))[motions]
    assert torch.equal(displacement(before, after), steps)
    assert torch.equal(displacement(after, before), -steps)


def test_real_clips_score_at_the_ceiling(real, held_out):
    videos, labels, motions = real
    q = judge(videos, labels, motions, held_out[0])
    assert q.frame_accuracy >= 0.98 and q.motion_accuracy == 1.0 and q.smoothness_db == float("inf")
    assert q.frechet_to_held_out < 15


def test_each_measure_falls_on_its_fault(real, held_out):
    videos, labels, motions = real
    shuffled = judge(videos[:, :, torch.randperm(videos.shape[2], generator=torch.Generator().manual_seed(1))],
                     labels, motions, held_out[0])  # fmt: skip
    assert shuffled.motion_accuracy < 0.3 and shuffled.smoothness_db < 15
    reversed_motion = judge(videos.flip(2), labels, motions, held_out[0])
    assert reversed_motion.motion_accuracy == 0.0
    wrong_digits = judge(videos, (labels + 1) % 10, motions, held_out[0])
    assert wrong_digits.frame_accuracy < 0.05
    noise = torch.rand(videos.shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
    scrambled = judge(noise, labels, motions, held_out[0])
    assert scrambled.frame_accuracy < 0.3 and scrambled.frechet_to_held_out > 100


def test_prompts_name_digit_and_motion_in_single_tokens():
    tokenizer = build_tokenizer()
    assert prompt_for(8, 3) == "an eight moving down"
    assert tokenizer.tokenize("an eight moving down") == ["▁an", "▁eight", "▁moving", "▁down"]
    pairs = example_clips(40)
    assert {label for label, _ in pairs} == set(range(10)) and {motion for _, motion in pairs} == set(range(4))
    assert len(set(example_prompts())) == 40
