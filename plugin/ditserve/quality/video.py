"""Quality of the moving-digits video model: per-frame digit accuracy, motion accuracy, temporal smoothness and
Fréchet distance on frames.

Each frame is judged on its own (models/digits/moving.py finds the digit on the wrapping canvas and cuts it
out for the shipped classifier), the motion between consecutive frames is read as the circular shift that best
aligns them, and smoothness is the PSNR between each frame and the previous one moved as the prompt asked: a
digit that keeps its shape from frame to frame scores high, one that flickers or morphs scores low. The same
measures on real clips of held-out digits give the ceiling beside each figure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ditserve.models.digits.moving import MOTIONS, digit_crops, motion_correct
from ditserve.quality.classifier import load_classifier
from ditserve.quality.frechet import frechet_distance
from ditserve.quality.metrics import mean_finite, psnr


@dataclass
class VideoQuality:
    clips: int
    frames: int
    frame_accuracy: float
    """Frames whose digit the classifier reads as the prompt's, over all frames of all clips."""
    clip_accuracy: float
    """Clips whose every frame is read right."""
    motion_accuracy: float
    """Frame-to-frame steps that move the digit exactly as asked, over all steps of all clips."""
    smoothness_db: float
    """Mean PSNR between each frame and its predecessor moved by the asked step (finite values)."""
    frechet_to_held_out: float
    """Fréchet distance of the frames' digit crops to the held-out digits (classifier features)."""


def frames_of(videos: torch.Tensor) -> torch.Tensor:
    """Videos (N, 1, F, H, W) → their frames (N·F, 1, H, W), clip by clip."""
    return videos.transpose(1, 2).flatten(0, 1)


def smoothness(videos: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
    """(N, F − 1) PSNR (dB, range [-1, 1]) between each frame and the frame before it moved by the asked step."""
    steps = torch.tensor(list(MOTIONS.values()))[motions]
    moved = torch.stack(
        [clip[:, :-1].roll(shifts=(int(r), int(c)), dims=(-2, -1)) for clip, (r, c) in zip(videos, steps, strict=True)]
    )
    after = videos[:, :, 1:]
    return psnr(frames_of(moved), frames_of(after)).view(videos.shape[0], -1)


@torch.no_grad()
def judge(videos: torch.Tensor, labels: torch.Tensor, motions: torch.Tensor, held_out: torch.Tensor) -> VideoQuality:
    """The measures for videos (N, 1, F, H, W) in [-1, 1] asked for digits `labels` moving as `motions`;
    `held_out` (M, 1, 8, 8) are the digits the Fréchet distance compares with."""
    classifier = load_classifier()
    n, frames = videos.shape[0], videos.shape[2]
    crops = digit_crops(frames_of(videos))
    correct = (classifier(crops).argmax(dim=1) == labels.repeat_interleave(frames)).view(n, frames)
    return VideoQuality(
        clips=n,
        frames=frames,
        frame_accuracy=correct.float().mean().item(),
        clip_accuracy=correct.all(dim=1).float().mean().item(),
        motion_accuracy=motion_correct(videos, motions).float().mean().item(),
        smoothness_db=mean_finite(smoothness(videos, motions).flatten()),
        frechet_to_held_out=frechet_distance(classifier.features(crops), classifier.features(held_out)),
    )
