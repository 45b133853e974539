"""TaylorSeer: "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers" (Liu et
al., 2025, arXiv 2503.06923) — a wrapper of diffusers' `TaylorSeerCacheConfig` hooks.

What is cached: every block's output and its finite differences up to `order` (Taylor factors).
When it is refreshed: the first `warmup` steps compute, then every N-th step; in between each
block's output is forecast by the Taylor series in the step offset. The paper (and diffusers) fix N
in steps; a forecast degrades with the stretch of the trajectory it spans, so N tuned at 50 steps
loses 5–10 dB at 20. Here N follows from `spacing`, a fraction of the denoising trajectory
(caching/trajectory.py): at the request's second call, whose step size is then known, every hook's
interval is set to the fewest steps that cover `spacing` (the default: every 2nd step at 20 steps,
every 3rd at 28, every 4th at 50). `interval` fixes N in steps instead. The hooks sit on the blocks the
family adapter lists (passed to diffusers as `cache_identifiers`), so a forecast block does not run.
`interval: 1` computes every block (bit-identical to no caching). Decisions are per batch.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.diffusers_hooks import DiffusersHookCache
from ditserve.caching.trajectory import TOLERANCE
from ditserve.registry import CACHES


class TaylorSeerConfig(CacheConfig):
    name: Literal["taylorseer"] = "taylorseer"
    spacing: float = Field(0.08, gt=0.0, le=1.0)
    """Full steps are at least this much denoising progress (1 − t/t₀) apart; the steps between forecast
    the block outputs. Holds its fidelity at any step count."""
    interval: int | None = Field(None, ge=1, le=100)
    """Compute every block every `interval` steps instead of by `spacing`."""
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
            cache_interval=self.config.interval or 1,
            disable_cache_before_step=self.config.warmup,
            max_order=self.config.order,
            taylor_factors_dtype=torch.float32,
            cache_identifiers=[re.escape(group.name) + r"\.\d+" for group in groups],
        )
        apply_taylorseer_cache(model.transformer, config)
        registries = [getattr(module, "_diffusers_hook", None) for module in model.transformer.modules()]
        self.hooks = [r.get_hook(self.hook_names[0]) for r in registries if r and r.get_hook(self.hook_names[0])]

    def _set_context(self) -> None:
        super()._set_context()
        if self.config.interval is None and self.calls.call == 1 and self.calls.progress > 0:
            interval = max(1, math.ceil((self.config.spacing - TOLERANCE) / self.calls.progress))
            for hook in self.hooks:
                hook.cache_interval = interval
