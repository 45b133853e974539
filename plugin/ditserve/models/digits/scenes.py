"""Scenes for the many-token text model: four digits in a 2×2 grid, one per named place.

A scene is four 16×16 digits (`data.py`'s encoding) tiled into one 32×32 image, so at patch 2 the
transformer sees 256 tokens, each one original pixel. Places are row-major (top left, top right,
bottom left, bottom right); a scene's labels are its four digits in that order. Scenes are drawn
afresh from the digit split at every step, so training never sees the same scene twice, and the
held-out split gives held-out scenes.
"""

from __future__ import annotations

import torch

from ditserve.models.digits.data import IMAGE_SIDE

PLACES = ("top left", "top right", "bottom left", "bottom right")
"""The four places, in the row-major order of a scene's labels."""
GRID = 2
"""Digits per side of a scene."""
SCENE_SIDE = GRID * IMAGE_SIDE


def compose(digits: torch.Tensor) -> torch.Tensor:
    """(N, 4, C, 16, 16) digits in place order → (N, C, 32, 32) scenes."""
    n, _, c, h, w = digits.shape
    return digits.view(n, GRID, GRID, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, GRID * h, GRID * w)


def crops(scenes: torch.Tensor) -> torch.Tensor:
    """(N, C, 32, 32) scenes → (N, 4, C, 16, 16) digits in place order: `compose` undone."""
    n, c, h, w = scenes.shape
    tiles = scenes.reshape(n, c, GRID, h // GRID, GRID, w // GRID).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(n, GRID * GRID, c, h // GRID, w // GRID)


def draw(images: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator):
    """`n` scenes of digits drawn uniformly (with replacement) from `images`/`labels`: (scenes, labels (n, 4))."""
    idx = torch.randint(0, images.shape[0], (n, len(PLACES)), generator=generator)
    return compose(images[idx]), labels[idx]
