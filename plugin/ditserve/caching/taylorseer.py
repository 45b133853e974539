"""TaylorSeer: "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers" (Liu et
al., 2025, arXiv 2503.06923) — a wrapper of diffusers' `TaylorSeerCacheConfig` hooks.

What is cached: every block's output and its finite differences up to `order` (Taylor factors).
When it is refreshed: the first `warmup` steps compute, then every `interval`-th step; in between each
block's output is forecast by the Taylor series in the step offset. The hooks sit on the blocks the
family adapter lists (passed to diffusers as `cache_identifiers`), so a forecast block does not run.
`interval: 1` computes every block (bit-identical to no caching). Decisions are per batch.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.diffusers_hooks import DiffusersHookCache
from ditserve.registry import CACHES


class TaylorSeerConfig(CacheConfig):
    name: Literal["taylorseer"] = "taylorseer"
    interval: int = Field(3, ge=1, le=100)
    """Compute every block every `interval` steps; forecast block outputs in between."""
    order: int = Field(1, ge=0, le=4)
    """Highest order of the Taylor expansion (0 reuses the last output)."""
    warmup: int = Field(3, ge=1, le=1000)
    """Steps at the start that always compute (they fill the finite differences)."""


@CACHES.register("taylorseer")
class TaylorSeer(DiffusersHookCache):
    """TaylorSeer: forecast block outputs by a Taylor series between full steps (diffusers' hooks)."""

    Config = TaylorSeerConfig
    hook_names = ("taylorseer_cache",)

    def install(self, model) -> None:
        from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

        groups = model.adapter.block_groups(model.transformer)
        config = TaylorSeerCacheConfig(
            cache_interval=self.config.interval,
            disable_cache_before_step=self.config.warmup,
            max_order=self.config.order,
            taylor_factors_dtype=torch.float32,
            cache_identifiers=[re.escape(group.name) + r"\.\d+" for group in groups],
        )
        apply_taylorseer_cache(model.transformer, config)
