"""FasterCache: "FasterCache: Training-Free Video Diffusion Model Acceleration with High Quality" (Lv et
al., 2024, arXiv 2410.19355) — a wrapper of diffusers' `FasterCacheConfig` hooks.

What is cached: the last two outputs of every self-attention layer, below block granularity (the
blocks still run their norms, cross-attention and MLPs). When it is refreshed: inside the noise-level
`window` a layer computes on every `interval`-th call; in between its output is extrapolated from its
last two outputs, F ≈ F₁ + w·(F₁ − F₂) with w = `weight` (the paper's dynamic feature reuse; diffusers
keeps w constant where the paper ramps it up over sampling). Outside the window every layer computes;
the first call of a request always does. The layers are the family adapter's self-attention layers,
handed to diffusers by exact name. The saving shows in the attention-evaluation count.

The paper's second half, CFG-Cache (compute the unconditional branch only every few steps and rebuild
it from the conditional one by a frequency-split residual), is switched off here, on purpose: diffusers'
denoiser hook assumes every transformer call carries [uncond; cond] in that order, while the engine
batches [cond; uncond] and, for a request with guidance ≤ 1, the conditional branch alone with the same
call signature — the hook would then split one request's images in two. The hooks run as for a
guidance-distilled model (`is_guidance_distilled=True`), which leaves only the attention reuse.
Step counts: as PAB's (caching/pab.py), the window is a range of noise levels and the default interval
extrapolates one call at a time, which holds at 20 steps as at 50 without scaling. `interval: 1`
computes every layer (bit-identical to no caching). Decisions are per batch: one pair of cached
outputs per layer holds the whole [cond; uncond] batch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.diffusers_hooks import AttentionHookCache, Window
from ditserve.registry import CACHES


class FasterCacheConfig(CacheConfig):
    name: Literal["fastercache"] = "fastercache"
    interval: int = Field(2, ge=1, le=100)
    """Inside the window, self-attention computes every `interval` calls and is extrapolated in between."""
    weight: float = Field(0.5, ge=0.0, le=2.0)
    """w in F ≈ F₁ + w·(F₁ − F₂): how far the last change is extrapolated (0 reuses the last output)."""
    window: Window = (-1.0, 681.0)
    """Noise levels (low, high), 0–1000 with 1000 at the request's first step, strictly inside which
    attention may be extrapolated; outside it every layer computes (diffusers' default range)."""


@CACHES.register("fastercache")
class FasterCache(AttentionHookCache):
    """FasterCache's dynamic feature reuse: self-attention extrapolated from its last two outputs."""

    Config = FasterCacheConfig
    hook_names = ("faster_cache_denoiser", "faster_cache_block")
    layer_hook = "faster_cache_block"

    def wanted_layers(self) -> list[str]:
        return [name for name, layer in self.layers.items() if not getattr(layer, "is_cross_attention", False)]

    def install(self, model) -> None:
        from diffusers.hooks import FasterCacheConfig as LibraryConfig
        from diffusers.hooks import apply_faster_cache

        weight = self.config.weight
        config = LibraryConfig(
            spatial_attention_block_skip_range=self.config.interval,
            spatial_attention_timestep_skip_range=tuple(self.config.window),
            spatial_attention_block_identifiers=self.exactly(self.wanted_layers()),
            temporal_attention_block_identifiers=(),
            attention_weight_callback=lambda layer: weight,
            is_guidance_distilled=True,  # no CFG-Cache: see the module docstring
            current_timestep_callback=self.level,
        )
        apply_faster_cache(model.transformer, config)
