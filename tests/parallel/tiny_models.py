"""Tiny checkpoints for the parallel tests: a DiT shaped like digits-dit, Flux and PixArt pipelines.

Head counts are chosen so that Ulysses degree 2 divides them; token counts (64 for the DiT; 96 image
and 512 text tokens for Flux at 32x48; 96 image tokens for PixArt at 32x48) divide by 2 and 4.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ditserve_testing import (
    clip_encoder,
    clip_tokenizer,
    image_vae,
    save_tiny_dit,
    t5_encoder,
    t5_tokenizer,
    tiny_flux_transformer,
    tiny_pixart_transformer,
)


def save_digits_like_dit(path: Path) -> Path:
    """A random DiT with digits-dit's shape (16x16 pixels, patch 2: 64 tokens, 4 heads), 2 blocks."""
    return save_tiny_dit(path, heads=4, sample_size=16)


def save_flux(path: Path) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    torch.manual_seed(0)
    clip_tok = clip_tokenizer()
    t5 = t5_tokenizer()
    transformer = tiny_flux_transformer(num_layers=1, num_single_layers=1)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    FluxPipeline(
        scheduler=scheduler,
        vae=image_vae(4, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=clip_encoder(clip_tok, 32, with_projection=False),
        tokenizer=clip_tok,
        text_encoder_2=t5_encoder(t5),
        tokenizer_2=t5,
        transformer=transformer,
    ).save_pretrained(path)
    return path


def save_pixart(path: Path) -> Path:
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline

    torch.manual_seed(0)
    tokenizer = t5_tokenizer()
    transformer = tiny_pixart_transformer(sample_size=16, num_layers=2, out_channels=8)
    PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=t5_encoder(tokenizer),
        vae=image_vae(4),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    ).save_pretrained(path)
    return path
