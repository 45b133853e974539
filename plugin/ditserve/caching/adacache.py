"""AdaCache: adaptive caching for faster video generation with diffusion transformers (Kahatapitiya et
al., 2024, arXiv 2411.02397).

What is cached: every block's residual. When it is refreshed: content-adaptively. After each full
step the rate of change of the features is measured — the relative L1 distance between the probe
block's residual now and at the previous full step, divided by the steps between them — and looked
up in a codebook: the smaller the change, the more steps reuse the cache before the next full step.
`codebook` maps change thresholds (ascending) to reuse lengths; a change above every threshold
recomputes at the next step. The first `warmup` steps always compute. An empty codebook computes
every block (bit-identical to no caching). Decisions are per batch (the paper decides per video).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from ditserve.caching.base import CacheConfig
from ditserve.caching.blocks import BlockCache, relative_l1
from ditserve.registry import CACHES


class AdaCacheConfig(CacheConfig):
    name: Literal["adacache"] = "adacache"
    codebook: list[tuple[float, int]] = Field(default=[(0.02, 4), (0.04, 3), (0.06, 2)], max_length=16)
    """(change threshold, steps to reuse) pairs, thresholds ascending: a change below a threshold reuses
    the cache for that many steps."""
    probe: int = Field(-1, ge=-1000, le=1000)
    """Index of the block whose residual measures the change (Python-style; −1 is the last)."""
    warmup: int = Field(2, ge=0, le=1000)
    """Steps at the start that always compute."""

    @field_validator("codebook")
    @classmethod
    def _ascending(cls, codebook):
        if [t for t, _ in codebook] != sorted(t for t, _ in codebook) or any(n < 1 for _, n in codebook):
            raise ValueError("thresholds must ascend and every reuse length be at least 1")
        return codebook


@CACHES.register("adacache")
class AdaCache(BlockCache):
    """AdaCache: after each full step, the features' rate of change picks how many steps reuse the cache."""

    Config = AdaCacheConfig

    def apply(self, model) -> None:
        super().apply(model)
        self.probe = self.config.probe % len(self.blocks)

    def reset(self) -> None:
        super().reset()
        self.next_full = 0
        self.probe_residual: torch.Tensor | None = None
        self.probe_call = 0

    def begin_call(self) -> None:
        self.full = self.call < self.config.warmup or self.call >= self.next_full

    def compute(self, index, block, args, kwargs) -> bool:
        return self.full

    def after_block(self, index, inputs, outputs) -> None:
        if index != self.probe:
            return
        residual = self.residuals[index]["hidden_states"]
        reuse = 0
        if self.probe_residual is not None:
            rate = relative_l1(residual, self.probe_residual) / max(self.call - self.probe_call, 1)
            reuse = next((steps for threshold, steps in self.config.codebook if rate < threshold), 0)
        self.probe_residual, self.probe_call = residual, self.call
        self.next_full = self.call + 1 + reuse
