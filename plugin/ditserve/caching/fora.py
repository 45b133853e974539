"""FORA: Fast-Forward Caching in Diffusion Transformer Acceleration (Selvaraju et al., 2024, arXiv 2407.01425).

What is cached: every block's residual (output − input, i.e. the gated sum of its attention and MLP
outputs). When it is refreshed: statically, every `interval` transformer calls after `warmup` calls
that always compute; in between every block adds its cached residual to its new input. `interval: 1`
computes every block at every step (bit-identical to no caching). Decisions are per batch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ditserve.caching.base import CacheConfig
from ditserve.caching.blocks import BlockCache
from ditserve.registry import CACHES


class ForaConfig(CacheConfig):
    name: Literal["fora"] = "fora"
    interval: int = Field(3, ge=1, le=100)
    """Compute all blocks every `interval` steps (FORA's N); reuse their residuals in between."""
    warmup: int = Field(0, ge=0, le=1000)
    """Steps at the start that always compute."""


@CACHES.register("fora")
class Fora(BlockCache):
    """FORA: reuse every block's residual for `interval - 1` steps after each full step (static)."""

    Config = ForaConfig

    def begin_call(self) -> None:
        self.full = self.call < self.config.warmup or (self.call - self.config.warmup) % self.config.interval == 0

    def compute(self, index, block, args, kwargs) -> bool:
        return self.full
