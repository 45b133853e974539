"""Tiny checkpoints for the parallel tests: a DiT shaped like digits-dit, Flux and PixArt pipelines.

Head counts are chosen so that Ulysses degree 2 divides them; token counts (64 for the DiT; 96 image
and 512 text tokens for Flux at 32x48; 96 image tokens for PixArt at 32x48) divide by 2 and 4.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ditserve_testing import save_tiny_dit, tiny_flux_pipeline, tiny_pixart_pipeline


def save_digits_like_dit(path: Path) -> Path:
    """A random DiT with digits-dit's shape (16x16 pixels, patch 2: 64 tokens, 4 heads), 2 blocks."""
    return save_tiny_dit(path, heads=4, sample_size=16)


def save_flux(path: Path) -> Path:
    torch.manual_seed(0)
    tiny_flux_pipeline(num_single_layers=1).save_pretrained(path)
    return path


def save_pixart(path: Path) -> Path:
    torch.manual_seed(0)
    tiny_pixart_pipeline(sample_size=16).save_pretrained(path)
    return path
