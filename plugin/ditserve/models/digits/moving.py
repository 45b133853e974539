"""Moving digits: the clips the embedded video model learns from, and how a generated clip is judged.

A clip is `FRAMES` frames of a `CANVAS`×`CANVAS` canvas on which one native 8×8 digit of the training split
moves one pixel per frame in one of the `MOTIONS`. The canvas wraps around (a torus): a digit leaving on the
left comes back on the right. That keeps every frame of a clip of any length a whole, classifiable digit, so
the techniques that make videos longer than the model was trained on (FIFO-Diffusion, Video-Infinity) are
judged by the same measures as a trained-length clip.

Judging a frame needs no knowledge of where the digit was put: `locate` finds the window that holds its ink,
`digit_crops` cuts it out for the project's classifier, and `displacement` reads the motion between two
frames as the circular shift that best aligns them (a cross-correlation through the FFT).
"""

from __future__ import annotations

import torch

from ditserve.models.digits.data import load_split, to_native

FRAMES = 8
"""Frames of a trained clip."""
CANVAS = 16
"""Side of a frame in pixels; the digit is `DIGIT`×`DIGIT` and moves one pixel per frame."""
DIGIT = 8
BACKGROUND = -1.0
MOTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
"""Motion name → (rows, columns) the digit moves per frame."""


def native_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits split at 8×8 in [-1, 1]: train images (N, 1, 8, 8), train labels, held-out images, labels."""
    split = load_split()
    return to_native(split.train_images), split.train_labels, to_native(split.held_out_images), split.held_out_labels


def clips(digits: torch.Tensor, motions: torch.Tensor, starts: torch.Tensor, frames: int = FRAMES) -> torch.Tensor:
    """Clips (N, 1, frames, CANVAS, CANVAS) in [-1, 1]: digit n (N, 1, 8, 8) with its top-left corner at
    `starts[n]` (rows, columns) in the first frame, moving by `MOTIONS` row `motions[n]` each frame."""
    n = digits.shape[0]
    canvas = torch.full((n, 1, CANVAS, CANVAS), BACKGROUND)
    canvas[:, :, :DIGIT, :DIGIT] = digits
    steps = torch.tensor(list(MOTIONS.values()))[motions]  # (N, 2)
    video = torch.empty(n, 1, frames, CANVAS, CANVAS)
    for i in range(n):
        for f in range(frames):
            shift = starts[i] + f * steps[i]
            video[i, :, f] = canvas[i].roll(shifts=(int(shift[0]), int(shift[1])), dims=(-2, -1))
    return video


def random_clips(
    digits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, generator: torch.Generator, frames: int = FRAMES
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips of digits `index`, each with a random motion and start drawn from `generator`: (clips, labels,
    motions)."""
    motions = torch.randint(0, len(MOTIONS), (index.shape[0],), generator=generator)
    starts = torch.randint(0, CANVAS, (index.shape[0], 2), generator=generator)
    return clips(digits[index], motions, starts, frames), labels[index], motions


def locate(frames: torch.Tensor) -> torch.Tensor:
    """Top-left corner (rows, columns) of the digit in each frame (M, 1, CANVAS, CANVAS) in [-1, 1], (M, 2).

    The 8×8 window of the wrapped canvas that holds the most ink (brightness above the background), found by a
    circular cross-correlation with the window; the window's weights rise by 1% towards its centre, so a digit
    narrower than the window is cut out centred rather than against an edge."""
    ink = (frames.float() - BACKGROUND).clamp(min=0).squeeze(1)  # (M, H, W)
    centred = 1 + 0.01 * (1 - (torch.arange(DIGIT) - (DIGIT - 1) / 2).abs() / (DIGIT / 2))
    window = torch.zeros(CANVAS, CANVAS)
    window[:DIGIT, :DIGIT] = centred[:, None] * centred[None, :]
    score = torch.fft.irfft2(torch.fft.rfft2(ink) * torch.fft.rfft2(window).conj(), s=ink.shape[-2:])
    best = score.flatten(1).argmax(dim=1)
    return torch.stack([best // CANVAS, best % CANVAS], dim=1)


def digit_crops(frames: torch.Tensor) -> torch.Tensor:
    """The 8×8 digit of each frame (M, 1, CANVAS, CANVAS) → (M, 1, 8, 8), for the classifier."""
    corners = locate(frames)
    moved = [f.roll(shifts=(-int(r), -int(c)), dims=(-2, -1)) for f, (r, c) in zip(frames, corners, strict=True)]
    return torch.stack(moved)[..., :DIGIT, :DIGIT]


def displacement(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """The circular shift (rows, columns) in [-CANVAS/2, CANVAS/2) that best maps each frame of `before` onto
    the same frame of `after` (M, 1, CANVAS, CANVAS), (M, 2): the peak of their circular cross-correlation."""
    a = (before.float() - BACKGROUND).squeeze(1)
    b = (after.float() - BACKGROUND).squeeze(1)
    correlation = torch.fft.irfft2(torch.fft.rfft2(b) * torch.fft.rfft2(a).conj(), s=a.shape[-2:])
    peak = correlation.flatten(1).argmax(dim=1)
    shift = torch.stack([peak // CANVAS, peak % CANVAS], dim=1)
    return (shift + CANVAS // 2) % CANVAS - CANVAS // 2


def motion_correct(videos: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
    """(N, frames − 1) bool: whether each step between consecutive frames of videos (N, 1, F, CANVAS, CANVAS)
    moves the digit exactly as `MOTIONS` row `motions[n]` asks."""
    n, _, frames = videos.shape[:3]
    before = videos[:, :, :-1].transpose(1, 2).flatten(0, 1)
    after = videos[:, :, 1:].transpose(1, 2).flatten(0, 1)
    expected = torch.tensor(list(MOTIONS.values()))[motions].repeat_interleave(frames - 1, dim=0)
    return (displacement(before, after) == expected).all(dim=1).view(n, frames - 1)
