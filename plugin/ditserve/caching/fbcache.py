"""First Block Cache (ParaAttention / diffusers' `FirstBlockCacheConfig`; in the spirit of TeaCache,
Liu et al., 2024, arXiv 2411.19108) — a wrapper of diffusers' hooks.

What is cached: the residual of all blocks after the first. When it is refreshed: block 0 runs at
every step; when its residual changed from the previous step's by at least `threshold` (mean
absolute difference over mean absolute value), the other blocks run and their residual is stored,
otherwise it is added to block 0's output. `threshold: 0` computes every block (bit-identical to no
caching). Decisions are per batch. diffusers finds the blocks itself (the transformer's block lists).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.diffusers_hooks import DiffusersHookCache
from ditserve.registry import CACHES


class FBCacheConfig(CacheConfig):
    name: Literal["fbcache"] = "fbcache"
    threshold: float = Field(0.05, ge=0.0, le=10.0)
    """Skip the remaining blocks while block 0's residual changes by less than this (relative)."""


@CACHES.register("fbcache")
class FBCache(DiffusersHookCache):
    """First Block Cache: block 0's residual change gates the rest of the step (diffusers' hooks)."""

    Config = FBCacheConfig
    hook_names = ("fbc_leader_block_hook", "fbc_block_hook")

    def install(self, model) -> None:
        from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

        apply_first_block_cache(model.transformer, FirstBlockCacheConfig(threshold=self.config.threshold))
