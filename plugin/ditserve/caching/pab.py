"""Pyramid Attention Broadcast: "Real-Time Video Generation with Pyramid Attention Broadcast" (Zhao et
al., 2024, arXiv 2408.12588) — a wrapper of diffusers' `PyramidAttentionBroadcastConfig` hooks.

What is cached: the output of every attention layer, below block granularity — the blocks still run
their norms and MLPs at every step. When it is refreshed: inside the noise-level `window` (the middle
of sampling, where attention changes least between steps) a self-attention layer computes on every
`self_interval`-th call and broadcasts (returns unchanged) its last output in between; a
cross-attention layer (to the text, on PixArt) on every `cross_interval`-th call — the "pyramid":
cross-attention changes least, so it is reused longest. Outside the window every layer computes; the
first call of a request always does. The layers are the family adapter's attention layers, handed
to diffusers by exact name. The saving shows in the attention-evaluation count, not in block counts.
Step counts: the window is a range of noise levels, so it spans the same stretch of the trajectory at
any step count; the intervals stay in calls, as in the paper: the default reuses a self-attention
output for one call at a time, the finest reuse there is, and only attention inside blocks that run,
which holds the fidelity target at 20 steps as at 50 without scaling.
`self_interval: 1, cross_interval: 1` computes every layer (bit-identical to no caching). Decisions
are per batch: one cached output per layer holds the whole [cond; uncond] batch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.diffusers_hooks import AttentionHookCache, Window
from ditserve.registry import CACHES


class PABConfig(CacheConfig):
    name: Literal["pab"] = "pab"
    self_interval: int = Field(2, ge=1, le=100)
    """Inside the window, self-attention computes every `self_interval` calls and is reused in between."""
    cross_interval: int = Field(4, ge=1, le=100)
    """Inside the window, cross-attention computes every `cross_interval` calls (families without
    cross-attention layers — DiT, SD3, Flux — have nothing it applies to)."""
    window: Window = (100.0, 800.0)
    """Noise levels (low, high), 0–1000 with 1000 at the request's first step, strictly inside which
    attention may be reused; outside it every layer computes (diffusers' default range)."""


@CACHES.register("pab")
class PAB(AttentionHookCache):
    """Pyramid Attention Broadcast: attention outputs reused for a few steps, cross-attention longest."""

    Config = PABConfig
    hook_names = ("pyramid_attention_broadcast",)
    layer_hook = "pyramid_attention_broadcast"

    def install(self, model) -> None:
        from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

        cross = [name for name, layer in self.layers.items() if getattr(layer, "is_cross_attention", False)]
        own = [name for name in self.layers if name not in cross]
        window = tuple(self.config.window)
        config = PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=self.config.self_interval,
            cross_attention_block_skip_range=self.config.cross_interval if cross else None,
            spatial_attention_timestep_skip_range=window,
            cross_attention_timestep_skip_range=window,
            spatial_attention_block_identifiers=self.exactly(own),
            temporal_attention_block_identifiers=(),
            cross_attention_block_identifiers=self.exactly(cross),
            current_timestep_callback=self.level,
        )
        apply_pyramid_attention_broadcast(model.transformer, config)
