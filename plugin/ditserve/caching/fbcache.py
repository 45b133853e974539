"""First Block Cache (ParaAttention / diffusers' `FirstBlockCacheConfig`; in the spirit of TeaCache,
Liu et al., 2024, arXiv 2411.19108) — a wrapper of diffusers' hooks.

What is cached: the residual of all blocks after the first. When it is refreshed: block 0 runs at
every step; when its residual changed from the one at the last full step by at least the threshold
(mean absolute difference over mean absolute value), the other blocks run and their residual is
stored, otherwise it is added to block 0's output. diffusers compares with a fixed threshold; here
`threshold` is stated for a step of 1/50 of the trajectory and the hook's threshold is set before
every call to it times the call's step size (caching/trajectory.py): the change over one step grows
with the step, so a threshold that skips at 50 steps skips nothing at 20, while the scaled one skips
at every step count. `threshold: 0` computes every block (bit-identical to no caching). Decisions are
per batch. diffusers finds the blocks itself (the transformer's block lists).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.diffusers_hooks import DiffusersHookCache
from ditserve.caching.trajectory import step_scale
from ditserve.registry import CACHES


class FBCacheConfig(CacheConfig):
    name: Literal["fbcache"] = "fbcache"
    threshold: float = Field(0.05, ge=0.0, le=10.0)
    """Skip the remaining blocks while block 0's residual changed by less than this (relative L1) since the
    last full step; stated for a step of 1/50 of the trajectory, scaled by the actual step's size."""


@CACHES.register("fbcache")
class FBCache(DiffusersHookCache):
    """First Block Cache: block 0's residual change gates the rest of the step (diffusers' hooks)."""

    Config = FBCacheConfig
    hook_names = ("fbc_leader_block_hook", "fbc_block_hook")

    def install(self, model) -> None:
        from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

        apply_first_block_cache(model.transformer, FirstBlockCacheConfig(threshold=self.config.threshold))
        registries = [getattr(module, "_diffusers_hook", None) for module in model.transformer.modules()]
        self.heads = [r.get_hook(self.hook_names[0]) for r in registries if r and r.get_hook(self.hook_names[0])]
        self.last_progress = 0.0

    def reset(self) -> None:
        super().reset()
        self.last_progress = 0.0

    def _set_context(self) -> None:
        super()._set_context()
        step, self.last_progress = self.calls.progress - self.last_progress, self.calls.progress
        for head in self.heads:
            head.threshold = self.config.threshold * step_scale(step)
