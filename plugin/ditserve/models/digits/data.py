"""The digits data set, its fixed train/held-out split, and its pixel-space encoding.

Both embedded models (the DiT and the quality classifier) train on the same training split; the
held-out split is only ever used to measure them. The split is a pure function of a seed, so every
machine gets the same one without shipping the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2
UPSAMPLE = 2
"""Each 8×8 pixel becomes a 2×2 block, so the model sees 16×16 images and a patch-2 token is one pixel."""
IMAGE_SIDE = 8 * UPSAMPLE

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class DigitsSplit:
    """Images in [-1, 1] at 16×16 (N, 1, 16, 16) float32 and their labels (N,) int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    held_out_images: torch.Tensor
    held_out_labels: torch.Tensor


def encode(raw: np.ndarray) -> torch.Tensor:
    """Turn sklearn's 8×8 digits (values 0..16) into 16×16 images in [-1, 1]."""
    images = torch.as_tensor(raw, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    return images.repeat_interleave(UPSAMPLE, dim=2).repeat_interleave(UPSAMPLE, dim=3)


def to_native(images: torch.Tensor) -> torch.Tensor:
    """Average each 2×2 block back to one pixel: (N, 1, 16, 16) in [-1, 1] → (N, 1, 8, 8)."""
    return F.avg_pool2d(images.float(), UPSAMPLE)


def load_split(seed: int = SPLIT_SEED) -> DigitsSplit:
    """The stratified train/held-out split of sklearn's bundled digits (1797 images, offline)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train_x, held_x, train_y, held_y = train_test_split(
        digits.data, digits.target, test_size=HELD_OUT_FRACTION, random_state=seed, stratify=digits.target
    )
    return DigitsSplit(
        train_images=encode(train_x),
        train_labels=torch.as_tensor(train_y, dtype=torch.long),
        held_out_images=encode(held_x),
        held_out_labels=torch.as_tensor(held_y, dtype=torch.long),
    )
